"""The subcommands, each built from the layers below: `fetch` (with `run`, the bracket of
deadline and metrics, and `expected`, what each file must hash to), `publish`, `inspect`
(`verify` and `status`) and `sidecar`. `cli.py` dispatches to them.
"""
