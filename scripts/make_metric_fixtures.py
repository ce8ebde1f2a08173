#!/usr/bin/env python3
"""Hand-made prediction files that hit each SQuAD normalisation rule, scored by the oracle
(../shared/ref/squad_metric.py, standard library only) into expected-metric fixtures for
crates/qa-eval/tests. Run: python3 scripts/make_metric_fixtures.py"""
import json, os, subprocess, sys

root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ref = os.environ.get("REF_DIR", os.path.join(root, "..", "shared", "ref"))
data = os.path.join(root, "crates", "qa-features", "tests", "fixtures")
out = os.path.join(root, "crates", "qa-eval", "tests", "fixtures")
os.makedirs(out, exist_ok=True)

v1 = {
    "rhine-q1": "THE  swiss Canton of GRAUBÜNDEN!",       # case (non-ASCII), article, punctuation, spaces
    "rhine-q2": "the navigation of the Rhine",             # partial overlap: F1 only
    "rhine-q3": "Sandoz.",                                 # trailing punctuation
    "kili-q1": "5895 metres",                              # comma inside a number is punctuation
    "kili-q2": "Hans Meyer & Ludwig",                      # partial
    "kili-q3": "“1973”",                                   # curly quotes are NOT removed: no EM
    "kili-q4": "an Moshi",                                 # article "an"
    # yangtze-q1 missing: scores 0 in v1.1
    "yangtze-q2": "East China Sea — at Shanghai",          # em dash survives as a token
    "yangtze-q3": "Chang Jiang",                           # accents are not stripped
    "ada-q1": "Charles Babbage’s",                         # curly apostrophe kept
    "ada-q2": "\tBernoulli\u00a0numbers ",                 # tabs/NBSP are whitespace
    "not-a-question": "ignored",                           # unknown id
}
v2 = dict(v1)
v2.update({"kili-q5-na": "", "ada-q3-na": "some wrong answer", "yangtze-q1": "22,500"})
na = {k: round(0.05 * i, 2) for i, k in enumerate(v2)}
na["rhine-q2"] = na["rhine-q1"]  # a tie: order decides

def dump(name, obj):
    with open(os.path.join(out, name), "w", encoding="utf-8") as f:
        json.dump(obj, f, ensure_ascii=False, indent=1)

def metric(*args):
    r = subprocess.run([sys.executable, os.path.join(ref, "squad_metric.py"), *args], capture_output=True, text=True, check=True)
    return json.loads(r.stdout)

dump("v1.predictions.json", v1)
dump("v2.predictions.json", v2)
dump("v2.na_probs.json", na)
expected = {
    "v1": metric(os.path.join(data, "tiny.json"), os.path.join(out, "v1.predictions.json")),
    "v1_only_predicted": metric(os.path.join(data, "tiny.json"), os.path.join(out, "v1.predictions.json"), "--only-predicted"),
    "v2": metric(os.path.join(data, "tiny_v2.json"), os.path.join(out, "v2.predictions.json")),
    "v2_na": metric(os.path.join(data, "tiny_v2.json"), os.path.join(out, "v2.predictions.json"), "--na-prob", os.path.join(out, "v2.na_probs.json")),
}
dump("expected.json", expected)
print(json.dumps(expected, indent=1))
