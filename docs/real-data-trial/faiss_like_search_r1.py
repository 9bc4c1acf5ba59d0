"""An 'existing' FAISS index as Search-R1 builds one (sentence-transformers, normalised, IndexFlatIP)."""
import json, sys, faiss, numpy as np
from searchgym.retrieval.encoder import default_encoder_path, load_sentence_transformer
texts = [json.loads(l)["contents"] for l in open(sys.argv[1])]
emb = load_sentence_transformer(default_encoder_path()).encode(texts, normalize_embeddings=True, convert_to_numpy=True)
index = faiss.IndexFlatIP(emb.shape[1]); index.add(np.asarray(emb, dtype=np.float32)); faiss.write_index(index, sys.argv[2])
print(f"wrote {sys.argv[2]}: {index.ntotal} vectors, dim {index.d}")
