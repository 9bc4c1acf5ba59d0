"""Public-format trial data of our own making: an 'entity dictionary' (one Search-R1 JSONL
entry per entity of a generated world: its intro + every fact passage about it) and 20
1- and 2-hop questions as a Search-R1 test.parquet (extra_info.split = "test")."""
import json, sys, collections
import pyarrow as pa, pyarrow.parquet as pq
from searchgym.envs.world import WorldConfig, generate_world, entity_of_doc
out = sys.argv[1]
w = generate_world(WorldConfig(preset="small", seed=7))
by_ent = collections.defaultdict(list)
for d in w.documents:
    by_ent[entity_of_doc(d.doc_id)].append(d)
import os; os.makedirs(out, exist_ok=True)
with open(f"{out}/corpus.jsonl", "w") as f:
    for n, (eid, docs) in enumerate(by_ent.items()):
        title = docs[0].title
        body = " ".join(d.text for d in docs)
        f.write(json.dumps({"id": str(n), "contents": f'"{title}"\n{body}'}) + "\n")
qs = [q for q in w.questions["test"] if q.family == "single_hop"][:10] + [q for q in w.questions["test"] if q.family == "multi_hop"][:10]
tmpl = ("Answer the given question. You must conduct reasoning inside <think> and </think> first every time you get new "
        "information. After reasoning, if you find you lack some knowledge, you can call a search engine by <search> query "
        "</search> and it will return the top searched results between <information> and </information>. You can search as "
        "many times as your want. If you find no further external knowledge needed, you can directly provide the answer "
        "inside <answer> and </answer>, without detailed illustrations. For example, <answer> Beijing </answer>. Question: {q}\n")
rows = [{"data_source": "entitydict", "prompt": [{"role": "user", "content": tmpl.format(q=q.question)}], "ability": "fact-reasoning",
         "reward_model": {"style": "rule", "ground_truth": {"target": list(q.golden_answers)}},
         "extra_info": {"split": "test", "index": i, "hops": q.hops}} for i, q in enumerate(qs)]
pq.write_table(pa.Table.from_pylist(rows), f"{out}/test.parquet")
lens = sorted(len(json.loads(l)["contents"]) for l in open(f"{out}/corpus.jsonl"))
print(f"{len(lens)} entries, contents chars median {lens[len(lens)//2]}, p90 {lens[int(len(lens)*.9)]}, max {lens[-1]}; {len(rows)} questions ({sum(r['extra_info']['hops']==1 for r in rows)} 1-hop, {sum(r['extra_info']['hops']>1 for r in rows)} multi-hop)")
