"""The app's routes, one router per endpoint family; `chatforge.serve.app` wires them."""
