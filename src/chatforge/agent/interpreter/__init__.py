"""The code interpreter: model-written Python run in sandboxed Jupyter kernels, one per session.

* `code_interpreter`: `CodeInterpreter`, the sessions under one root directory.
* `session`: `InterpreterSession`, one conversation's kernel (a real ``ipykernel`` started
  through ``jupyter_client``) and its working directory; `files` adds upload and listing.
* `launch`: starting and stopping a session's kernel process under the sandbox launcher.
* `sandbox`: the process limits applied inside a kernel before IPython starts.
* `landlock`: Landlock confinement (files, TCP, signals).
* `outputs`: `ExecutionResult` and its typed items, collected from iopub messages.
* `config`: `InterpreterConfig`, the settings.

The public names are re-exported once, by :mod:`chatforge.agent`.
"""
