#!/bin/bash
# The held-out-style trial, every step's command and output (markdown transcript on stdout).
# Usage: bash docs/real-data-trial/trial.sh > transcript.md   (about 12 min on 2 busy cores)
REPO=$(cd "$(dirname "$0")/../.." && pwd); TRIAL_DIR=${TRIAL_DIR:-/tmp/trial}; mkdir -p "$TRIAL_DIR"; cp "$(dirname "$0")"/*.py "$TRIAL_DIR"; cd "$TRIAL_DIR"
export OMP_NUM_THREADS=1 SEARCHGYM_HOME=$TRIAL_DIR/home PATH=$REPO/.venv/bin:$PATH
run() { echo; echo '```'; echo "\$ $*"; bash -c "$*" 2>&1 | sed -e 's/\x1b\[[0-9;]*m//g' | grep -v "Writing model shards"; echo "[exit ${PIPESTATUS[0]}]"; echo '```'; }
step() { echo; echo "### $*"; }
step "0. data of our own making (public Search-R1 formats)"
run python make_data.py proj
run "sha256sum proj/* > $TRIAL_DIR/before.sha; cat $TRIAL_DIR/before.sha"
step "1. index build --out the project folder: refused, nothing changed"
run searchgym index build --corpus proj/corpus.jsonl --out proj
run "sha256sum -c $TRIAL_DIR/before.sha && ls -A proj"
step "1b. world --out the project folder: refused"
run searchgym world --preset smoke --out proj
run "sha256sum -c --quiet $TRIAL_DIR/before.sha && echo unchanged"
step "2. a task file, stored; the id works in fresh processes and CLI commands"
run "cat > proj/task.yaml <<'YAML'
name: trial
qa: test.parquet
corpus: corpus.jsonl
retriever: bm25
data_sources: [entitydict]
YAML
cat proj/task.yaml"
run searchgym task add proj/task.yaml
run searchgym task list
run searchgym eval --policy random --env searchgym/trial --split train -n 5 --out ev.jsonl
run "python -c \"import gymnasium, searchgym.envs; e = gymnasium.make('searchgym/trial', split='train'); o, i = e.reset(options={'index': 0}); print(repr(o[-80:])); print(i['golden_answers'])\""
run "python -c \"import pickle, gymnasium, searchgym.envs; open('spec.pkl','wb').write(pickle.dumps(gymnasium.spec('searchgym/trial')))\" && SEARCHGYM_HOME=$TRIAL_DIR/empty-home python -c \"import pickle, gymnasium; e = gymnasium.make(pickle.load(open('spec.pkl','rb')), split='test'); o, i = e.reset(options={'index': 12}); print(i['question'], i['golden_answers']); print(e.step('<search> ' + i['question'] + ' </search>')[0][:300])\""
step "3. Search-R1 data as it is: prompt kept, whole passages"
run python cut_check.py
step "3b. verl: raw parquet, dry-run"
run "searchgym train rl --backend verl --model $TRIAL_DIR/model --train-files proj/test.parquet --val-files proj/test.parquet --out vrun --data-source entitydict=searchgym/nope --dry-run; ls vrun 2>&1"
run "searchgym train rl --backend verl --objective er_shaped --model $TRIAL_DIR/model --env searchgym/trial --out vrun2 --dry-run; ls vrun2 2>&1"
run "searchgym train rl --backend verl --model $TRIAL_DIR/model --train-files proj/test.parquet --val-files proj/test.parquet --out vrun --dry-run | tail -2; ls vrun"
step "4. an existing FAISS index imported without re-encoding; one index per corpus"
run python faiss_like_search_r1.py proj/corpus.jsonl e5_like_Flat.index
run "time searchgym index import --faiss e5_like_Flat.index --corpus proj/corpus.jsonl --out idx-imported"
run "searchgym index query idx-imported 'founder of' -k 2"
run "python -c \"
import gymnasium as gym, searchgym.envs, os
from searchgym.envs.registry import register_task
for name in ('dense_a', 'dense_b'):
    gym.make(register_task(name, qa='proj/test.parquet', corpus_or_index='proj/corpus.jsonl', retriever='dense'), split='test')
print(sorted(os.listdir('home/indexes')))
\""
run "python speed.py proj/corpus.jsonl 2"
step "5. async vector envs with default settings"
run "python -c \"
import gymnasium as gym, searchgym.envs
v = gym.make_vec('searchgym/trial', num_envs=2, vectorization_mode='async', split='test')
o, _ = v.reset(seed=0); print([x[-60:] for x in o])
o, r, *_ = v.step(['<search> founder </search>', '<answer> x </answer>']); print([x[:70] for x in o], r); v.close()
\""
step "6. smaller items"
run "python -c \"import json; open('dup.jsonl','w').write(''.join(json.dumps({'id': i, 'contents': '\\\"T\\\"\\nx'})+'\\n' for i in ['a','b','a']))\" && searchgym index build --corpus dup.jsonl --out dupidx --retriever bm25"
run "searchgym index build --corpus proj/corpus.jsonl --out sigidx --no-progress & P=\$!; while ! ls -d .sigidx.*.tmp >/dev/null 2>&1; do sleep 0.1; done; ls -A | grep sigidx; kill -TERM \$P; wait \$P; echo \"build exit \$?\"; ls -A | grep sigidx || echo 'no sigidx temp left'"
run "python -c \"import socket,time,subprocess; s=socket.socket(); s.bind(('127.0.0.1',0)); s.listen(); p=s.getsockname()[1]; r=subprocess.run(['searchgym','serve','--index','idx-imported','--port',str(p)],capture_output=True,text=True); print('exit', r.returncode, 'stdout', repr(r.stdout)); print(r.stderr.strip())\""
