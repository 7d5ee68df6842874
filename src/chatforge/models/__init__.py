"""Model references and loading: the embedded default, local directories, GGUF files,
ChatGLM checkpoints, devices, dtypes and adapters."""
