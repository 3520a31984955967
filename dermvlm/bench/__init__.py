"""The DermaBench-style evaluator: questions file + answers file + a model adapter ->
predictions (resumable), metrics with bootstrap intervals, breakdowns by question, domain and
Fitzpatrick group, a Markdown report and plots (`run.run_benchmark`). Entry points:
`dermvlm eval dermabench` and `python -m eval.dermabench` (both through `command`)."""
