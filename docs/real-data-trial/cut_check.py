"""Of the top-3 BM25 hits (question as query) whose whole passage contains a gold answer,
how many does a 180-character cut hide, and how many the external default (2000)?"""
import gymnasium as gym, searchgym.envs
from searchgym.envs.env import format_docs
from searchgym.envs.reward import normalize_answer
env = gym.make("searchgym/trial", split="test").unwrapped
full = hidden180 = hidden_default = 0
for q in env.questions:
    hits = env.retriever.search([q.question], 3)[0]
    for h in hits:
        golds = [normalize_answer(g) for g in q.golden_answers]
        if any(g in normalize_answer(h.text) for g in golds):
            full += 1
            for limit, name in ((180, "h180"), (env.config.doc_chars, "hdef")):
                shown = normalize_answer(format_docs([h], limit))
                if not any(g in shown for g in golds):
                    if name == "h180": hidden180 += 1
                    else: hidden_default += 1
print(f"top-3 hits containing a gold answer: {full}; hidden by doc_chars=180: {hidden180}; "
      f"hidden by the external default doc_chars={env.config.doc_chars}: {hidden_default}")
