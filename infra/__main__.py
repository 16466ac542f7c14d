"""Pulumi program entry point (Pulumi.yaml: main: infra/). Thin: everything is in
modelrail.infra.program, which validates Pulumi.<stack>.yaml and builds the components."""

from modelrail.infra.program import main

main()
