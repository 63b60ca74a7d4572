"""Evaluation on multiple-choice video QA: MVBench, Video-MME, NExT-QA, EgoSchema.

    formats   the benchmarks' annotation files -> Question(id, video, question, options, answer, category)
    scoring   the prompt, the option letter in an answer, accuracy overall and per category
    runner    questions sharded over processes (torchrun), gathered and scored on rank 0
    journal   each process's answers as they come, beside --out, so that a rerun after a crash resumes
"""

from .formats import LETTERS, Question, load_benchmark
from .runner import answer_all, evaluate, write_json_atomic
from .scoring import accuracy, extract_choice, mc_prompt

__all__ = ["Question", "LETTERS", "load_benchmark", "mc_prompt", "extract_choice", "accuracy", "answer_all",
           "evaluate", "write_json_atomic"]
