"""Validate the applied overlays offline: `python -m ops.deploycheck` (make deploy-check).

Built-in kinds against the pinned Kubernetes version's schemas, strictly (an unknown field
fails), with kubernetes-validate. The three custom resources (cert-manager Certificate and
Issuer, CloudNativePG Cluster) against the part of their CRD schemas shop uses, written
out below: an unknown field or a wrong type fails there too. A kind known to neither fails.
"""

from __future__ import annotations

import sys
from typing import Any

import jsonschema
import kubernetes_validate

from ops.deploygen import OVERLAYS, Doc, render_overlay

__all__ = ["CRD_SCHEMAS", "KUBERNETES_VERSION", "main", "problems"]

KUBERNETES_VERSION = "1.33.0"


def _obj(props: dict[str, Any], required: tuple[str, ...] = ()) -> dict[str, Any]:
    return {"type": "object", "properties": props, "required": list(required),
            "additionalProperties": False}


_STR = {"type": "string"}
_STRS = {"type": "array", "items": _STR}
_META = {"type": "object", "required": ["name"]}


def _resource(api: str, kind: str, spec: dict[str, Any]) -> dict[str, Any]:
    return _obj({"apiVersion": {"const": api}, "kind": {"const": kind}, "metadata": _META,
                 "spec": spec}, ("apiVersion", "kind", "metadata", "spec"))


CRD_SCHEMAS: dict[tuple[str, str], dict[str, Any]] = {
    ("cert-manager.io/v1", "Certificate"): _resource("cert-manager.io/v1", "Certificate", _obj({
        "secretName": _STR, "duration": _STR, "renewBefore": _STR, "commonName": _STR,
        "dnsNames": _STRS, "uris": _STRS,
        "usages": {"type": "array", "items": {"enum": [
            "server auth", "client auth", "digital signature", "key encipherment"]}},
        "privateKey": _obj({"algorithm": {"enum": ["RSA", "ECDSA", "Ed25519"]},
                            "size": {"type": "integer"},
                            "rotationPolicy": {"enum": ["Never", "Always"]}}),
        "issuerRef": _obj({"name": _STR, "kind": {"enum": ["Issuer", "ClusterIssuer"]},
                           "group": _STR}, ("name",)),
    }, ("secretName", "issuerRef"))),
    ("cert-manager.io/v1", "Issuer"): _resource("cert-manager.io/v1", "Issuer", _obj({
        "ca": _obj({"secretName": _STR}, ("secretName",))})),
    ("postgresql.cnpg.io/v1", "Cluster"): _resource("postgresql.cnpg.io/v1", "Cluster", _obj({
        "instances": {"type": "integer", "minimum": 1},
        "primaryUpdateStrategy": {"enum": ["unsupervised", "supervised"]},
        "storage": _obj({"size": _STR, "storageClass": _STR}),
        "postgresql": _obj({"synchronous": _obj({"method": {"enum": ["any", "first"]},
                                                  "number": {"type": "integer"}},
                                                 ("method", "number")),
                            "parameters": {"type": "object"}}),
        "bootstrap": _obj({"initdb": _obj({"database": _STR, "owner": _STR,
                                           "postInitSQL": _STRS})}),
        "enablePDB": {"type": "boolean"},
    }, ("instances",))),
}


def problems(doc: Doc) -> list[str]:
    """What is wrong with one rendered document ([] when it is valid)."""
    api, kind = str(doc.get("apiVersion")), str(doc.get("kind"))
    name = f"{kind}/{doc.get('metadata', {}).get('name')}"
    schema = CRD_SCHEMAS.get((api, kind))
    if schema is not None:
        validator = jsonschema.Draft202012Validator(schema)
        return [f"{name}: {'.'.join(map(str, e.absolute_path))}: {e.message}"
                for e in validator.iter_errors(doc)]
    try:
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.ValidationError as err:
        return [f"{name}: {'.'.join(map(str, err.path))}: {err.message}"]
    except kubernetes_validate.SchemaNotFoundError:
        return [f"{name}: no schema for {api} {kind}"]
    return []


def main() -> int:
    bad = 0
    for overlay in OVERLAYS:
        docs = render_overlay(overlay)
        found = [f"{overlay}: {p}" for doc in docs for p in problems(doc)]
        for line in found:
            print(line, file=sys.stderr)
        bad += len(found)
        print(f"{overlay}: {len(docs)} resources checked against Kubernetes "
              f"{KUBERNETES_VERSION} (strict){'' if not found else f', {len(found)} problems'}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
