"""What an operator sees: `log` (JSON or text lines, one event each), `metrics` (Prometheus
on an injected registry: HTTP endpoint, Pushgateway, textfile) and `progress`.

Imports: errors only, so every other layer may log and count.
"""
