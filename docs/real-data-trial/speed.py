"""Dense build docs/s (build_index, default encoder, flat) vs raw sentence-transformers encode
of the same passages, interleaved: raw, build, raw, build. Same threads for both."""
import json, os, shutil, sys, time
import torch
from searchgym.retrieval import build_index
from searchgym.retrieval.encoder import default_encoder_path, load_sentence_transformer
corpus, threads = sys.argv[1], int(sys.argv[2])
torch.set_num_threads(threads)
texts = [json.loads(l)["contents"] for l in open(corpus)]
st = load_sentence_transformer(default_encoder_path())
st.encode(texts[:64], batch_size=64)  # warm-up, both paths share the loaded model
for rnd in range(2):
    t = time.perf_counter(); st.encode(texts, batch_size=64, normalize_embeddings=True, convert_to_numpy=True)
    raw = time.perf_counter() - t
    out = f"speed-idx-{rnd}"; shutil.rmtree(out, ignore_errors=True)
    t = time.perf_counter(); build_index(corpus, out, kind="dense", progress=False, threads=threads)
    b = time.perf_counter() - t
    print(f"round {rnd}: raw sentence-transformers encode {len(texts)/raw:.1f} docs/s ({raw:.1f} s); "
          f"searchgym index build (encode + FAISS + files) {len(texts)/b:.1f} docs/s ({b:.1f} s); ratio {raw/b:.2f}; "
          f"load avg {os.getloadavg()[0]:.1f}")
