"""Infrastructure: what provisions an environment.

  config.py      the typed stack configuration (Pulumi.<stack>.yaml), validated once
  manifests.py   pure builders: Kubernetes objects as plain dicts (the single source of truth,
                 shared by the Pulumi components, `modelrail render` and the controller)
  components.py  Pulumi ComponentResources wrapping the builders
  program.py     the Pulumi program (infra/__main__.py calls it)
  parity.py      environment diff and the parity check between stacks
"""
