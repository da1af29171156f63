"""Model registries that name a model by name, version or alias (issue 15).

uri.py       the URI forms and the registry settings, pure (config.py parses with them)
http.py      JSON over urllib, its errors mapped into ours at this boundary
mlflow.py    MLflow Model Registry REST API 2.0: resolve, and register for `publish`
kubeflow.py  Kubeflow Model Registry REST API v1alpha3: resolve
resolve.py   the entry point: a registry URI in, one immutable `Resolved` location out
"""
