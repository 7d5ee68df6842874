"""``chatforge bench``: chatforge's engines measured side by side with the references a user
would otherwise pick (plain transformers, plain llama.cpp), in one run.

* `options`: what to measure (`BenchOptions`) and the `Results`.
* `subjects`: the things measured, chatforge's engines and the raw references.
* `client`: the concurrent-streams clients, through the HTTP server.
* `run`: the measurements and `run_bench`.
* `report`: Markdown tables, the goals as ratios within one run, a plot.
"""
