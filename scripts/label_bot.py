#!/usr/bin/env python3
# A simulated labeller for the human scorer's page (docs/results.md, "Human labels in the loop"):
# prefers the completion with the larger `letters` reward (the quickstart task's rule, minimum 8
# characters as in crates/rlhf-data/src/task.rs), a tie when equal. Usage:
#   python3 scripts/label_bot.py http://127.0.0.1:8099
# Runs until the page has stopped answering for 30 s after the first label; prints the count.
import json, re, sys, time, urllib.request
page = sys.argv[1]
MIN = int(sys.argv[2]) if len(sys.argv) > 2 else 8
def post(path, body):
    req = urllib.request.Request(page + path, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=5) as r:
        return json.load(r)
def letters(completion, target):
    chars = [c for c in completion if not c.isspace()]
    return sum(c == target for c in chars) / max(len(chars), MIN)
answered, last = 0, time.time()
while True:
    try:
        item = post("/api/next", {"labeler": "bot"})["item"]
    except Exception:
        if answered and time.time() - last > 30: break
        time.sleep(0.2); continue
    if not item:
        time.sleep(0.02); continue
    m = re.search(r"letter (\w)", item["prompt"])
    t = m.group(1) if m else ""
    a, b = letters(item["a"], t), letters(item["b"], t)
    choice = "a" if a > b else "b" if b > a else "tie"
    post("/api/label", {"item": item["item"], "choice": choice, "labeler": "bot"})
    answered += 1; last = time.time()
print(json.dumps({"answered": answered}))
