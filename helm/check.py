#!/usr/bin/env python3
"""Validates the rlhf Helm chart with the real Helm library (helm-python-sdk, Helm v4) and the
Kubernetes API schemas (kubernetes-validate); renders it for tests/helm.rs.

  check.py lint                 lint --strict and render every values set (the defaults and
                                rlhf/ci/*-values.yaml), validate every object against the
                                Kubernetes 1.28 and 1.34 schemas (unknown fields are errors),
                                and check that bad values (values.schema.json, the templates'
                                own checks) are refused with a message naming them
  check.py render VALUES.yaml   print every rendered object (test hooks too) as one JSON list

Needs: pip install helm-python-sdk==0.2.2 pyyaml kubernetes-validate (scripts/test does it).
"""
import glob
import json
import os
import sys

import helm_python as helm
import kubernetes_validate
import yaml

CHART = os.path.join(os.path.dirname(os.path.abspath(__file__)), "rlhf")
KUBERNETES = ["1.28", "1.34"]


def load_values(path):
    if path is None:
        return None
    with open(path) as f:
        return yaml.safe_load(f) or {}


def render(values, name="demo", namespace="ml"):
    """Every object of the chart rendered with `values`, in template order."""
    manifests = helm.Chart.load(CHART).render(values, name=name, namespace=namespace)
    objects = []
    for template, text in sorted(manifests.items()):
        if not template.endswith(".yaml"):
            continue
        for doc in yaml.safe_load_all(text):
            if doc:
                doc.setdefault("metadata", {}).setdefault("annotations", {})
                doc["metadata"]["annotations"]["rlhf.test/template"] = template
                objects.append(doc)
    return objects


def lint():
    problems = []
    sets = [None] + sorted(glob.glob(os.path.join(CHART, "ci", "*-values.yaml")))
    for path in sets:
        label = os.path.relpath(path, CHART) if path else "default values"
        values = load_values(path)
        report = helm.lint(CHART, values, strict=True)
        for m in report.get("messages", []):
            if m["severity"] >= 2:
                problems.append(f"{label}: lint: {m['path']}: {m['error']}")
        problems += [f"{label}: lint: {e}" for e in report.get("errors", [])]
        objects = render(values)
        for doc in objects:
            template = doc["metadata"]["annotations"].pop("rlhf.test/template")
            if not doc["metadata"]["annotations"]:
                del doc["metadata"]["annotations"]
            for version in KUBERNETES:
                try:
                    kubernetes_validate.validate(doc, version, strict=True)
                except kubernetes_validate.ValidationError as e:
                    problems.append(
                        f"{label}: {template}: {doc['kind']} {doc['metadata'].get('name')}: "
                        f"Kubernetes {version}: {e.message} at {'.'.join(map(str, e.path))}"
                    )
        kinds = sorted({d["kind"] for d in objects})
        print(f"{label}: {len(objects)} objects ({', '.join(kinds)})")
    # Bad values are refused at render time (values.schema.json, then the templates), naming
    # what to change.
    refused = [
        ({"runFile": "[model]\npath = \"/m\"\n[cluster]\netcd = []\n"}, "runFile"),
        ({"etcd": {"enabled": False, "endpoints": []}}, "etcd.endpoints"),
        ({"etcd": {"replicas": 2}}, "/etcd/replicas"),
        ({"coordinater": {"replicas": 2}}, "coordinater"),
        ({"rollout": {"replicas": 0}}, "/rollout/replicas"),
        ({"ports": {"learner": "50051"}}, "/ports/learner"),
        ({"auth": {"existingSecret": "admin"}}, "auth.existingSecret"),
        ({"etcd": {"tls": {"existingSecret": "etcd-tls"}}}, "etcd.tls.existingSecret"),
        ({"tls": {"existingSecret": "Not_A_Name"}}, "/tls/existingSecret"),
    ]
    for values, named in refused:
        try:
            render(values)
            problems.append(f"{values}: rendered, but should be refused naming {named}")
        except helm.HelmError as e:
            if named not in str(e):
                problems.append(f"{values}: refused without naming {named}: {e}")
    for p in problems:
        print("error:", p, file=sys.stderr)
    return 1 if problems else 0


def main(argv):
    if len(argv) >= 2 and argv[1] == "lint":
        return lint()
    if len(argv) == 3 and argv[1] == "render":
        json.dump(render(load_values(argv[2])), sys.stdout)
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
