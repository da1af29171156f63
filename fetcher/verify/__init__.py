"""What the bytes must be: hashes (`hashes`), the manifest format (`manifest`), and the
format checks a server would fail on (`checks` over `safetensors`, `gguf`, `formats`). All
synchronous: callers on the event loop run them in a thread.
"""
