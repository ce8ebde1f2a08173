"""huggingface_hub's own client against qa-serve: `InferenceClient(URL).question_answering`.
Usage: hf_client.py URL TOKEN QUESTION CONTEXT; prints the answers as JSON (top_k 1, then 2)."""
import json
import sys

from huggingface_hub import InferenceClient

url, token, question, context = sys.argv[1:5]
client = InferenceClient(model=url, token=token)
best = client.question_answering(question=question, context=context)
top2 = client.question_answering(question=question, context=context, top_k=2, max_answer_len=10)
print(json.dumps({
    "best": {"answer": best.answer, "score": best.score, "start": best.start, "end": best.end},
    "top2": [{"answer": a.answer, "score": a.score, "start": a.start, "end": a.end} for a in top2],
}))
