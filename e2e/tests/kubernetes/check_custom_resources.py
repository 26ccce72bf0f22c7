"""Checks kuma.io custom resources against the CustomResourceDefinitions as an API server
with strict field validation (kubectl's default) would: a field the schema does not name is
an error unless its node keeps unknown fields; `nullable`, int-or-string and the types are
honoured. Usage: check_custom_resources.py CRD_DIR MANIFEST... (multi-document YAML; other
groups' objects are skipped). Prints one line per resource; exits 1 if any is refused."""

import glob
import os
import sys

import jsonschema
import yaml


def as_jsonschema(node):
    if not isinstance(node, dict):
        return {}
    out = {}
    if node.get("x-kubernetes-int-or-string"):
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    elif "type" in node:
        out["type"] = [node["type"], "null"] if node.get("nullable") else node["type"]
    for key in ("minimum", "maximum", "minLength", "maxLength", "pattern", "minItems", "maxItems", "required"):
        if key in node:
            out[key] = node[key]
    if "enum" in node:
        out["enum"] = list(node["enum"]) + ([None] if node.get("nullable") else [])
    if "properties" in node:
        out["properties"] = {k: as_jsonschema(v) for k, v in node["properties"].items()}
        if not node.get("x-kubernetes-preserve-unknown-fields"):
            out["additionalProperties"] = False
    if "additionalProperties" in node:
        out["additionalProperties"] = as_jsonschema(node["additionalProperties"])
    if "items" in node:
        out["items"] = as_jsonschema(node["items"])
    return out


def main():
    crd_dir, manifests = sys.argv[1], sys.argv[2:]
    schemas = {}
    for path in glob.glob(os.path.join(crd_dir, "*.yaml")):
        with open(path) as f:
            crd = yaml.safe_load(f)
        kind = crd["spec"]["names"]["kind"]
        version = crd["spec"]["versions"][0]
        schemas[kind] = as_jsonschema(version["schema"]["openAPIV3Schema"])
    refused = 0
    for manifest in manifests:
        with open(manifest) as f:
            docs = [d for d in yaml.safe_load_all(f) if d]
        for doc in docs:
            if not str(doc.get("apiVersion", "")).startswith("kuma.io/"):
                continue
            kind = doc.get("kind")
            name = f"{manifest}: {kind} {doc.get('metadata', {}).get('name')}"
            if kind not in schemas:
                print(f"REFUSED {name}: no CustomResourceDefinition for kind {kind}")
                refused += 1
                continue
            errors = sorted(jsonschema.Draft7Validator(schemas[kind]).iter_errors(doc), key=str)
            if errors:
                refused += 1
                for e in errors:
                    path = ".".join(str(p) for p in e.absolute_path)
                    print(f"REFUSED {name}: {path}: {e.message}")
            else:
                print(f"ok {name}")
    sys.exit(1 if refused else 0)


if __name__ == "__main__":
    main()
