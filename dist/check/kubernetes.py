#!/usr/bin/env python3
"""Checks dist/kubernetes/*.yaml without a cluster (PyYAML, Debian's python3-yaml).

Every document must parse and carry apiVersion, kind and metadata.name (and a namespace where
the kind is namespaced); then the pieces must fit together: the Service and the ServiceMonitor
select the DaemonSet's pods, name its metrics port, and the scrape annotations, the probes and
`--metrics` agree on that port; the DaemonSet uses host networking, mounts the served tree
read-only on a read-only root filesystem, and adds no capability but the ones `--user` needs.
Schema validation against Kubernetes' own OpenAPI schemas is kubernetes.sh's other half.
"""

import pathlib
import sys

import yaml

ROOT = pathlib.Path(__file__).resolve().parents[1] / "kubernetes"
CLUSTER_SCOPED = {"Namespace"}
KNOWN = {
    ("v1", "Namespace"),
    ("apps/v1", "DaemonSet"),
    ("v1", "Service"),
    ("monitoring.coreos.com/v1", "ServiceMonitor"),
}
errors = []


def check(ok, message):
    if not ok:
        errors.append(message)


docs = []
for path in sorted(ROOT.glob("*.yaml")):
    try:
        loaded = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    except yaml.YAMLError as e:
        errors.append(f"{path.name}: {e}")
        continue
    for doc in loaded:
        where = f"{path.name}: {doc.get('kind')}/{doc.get('metadata', {}).get('name')}"
        check(isinstance(doc, dict), f"{path.name}: a document is not a mapping")
        for field in ("apiVersion", "kind", "metadata"):
            check(field in doc, f"{where}: no {field}")
        check((doc.get("apiVersion"), doc.get("kind")) in KNOWN, f"{where}: unexpected kind")
        meta = doc.get("metadata", {})
        check(bool(meta.get("name")), f"{where}: no metadata.name")
        if doc.get("kind") not in CLUSTER_SCOPED:
            check(meta.get("namespace") == "ringtftp", f"{where}: not in namespace ringtftp")
        docs.append((where, doc))

by_kind = {}
for where, doc in docs:
    by_kind.setdefault(doc.get("kind"), []).append((where, doc))
for kind in ("Namespace", "DaemonSet", "Service", "ServiceMonitor"):
    check(len(by_kind.get(kind, [])) == 1, f"expected exactly one {kind}")
if errors:
    print("\n".join(errors), file=sys.stderr)
    sys.exit(1)

(ds_where, ds), = by_kind["DaemonSet"]
(svc_where, svc), = by_kind["Service"]
(sm_where, sm), = by_kind["ServiceMonitor"]

template = ds["spec"]["template"]
pod_labels = template["metadata"]["labels"]
check(ds["spec"]["selector"]["matchLabels"].items() <= pod_labels.items(),
      f"{ds_where}: the selector does not match the pod template")
pod = template["spec"]
check(pod.get("hostNetwork") is True, f"{ds_where}: no hostNetwork")
check(pod.get("dnsPolicy") == "ClusterFirstWithHostNet", f"{ds_where}: dnsPolicy")
(container,) = pod["containers"]
ports = {p["name"]: p for p in container["ports"]}
check(ports.get("tftp", {}).get("protocol") == "UDP", f"{ds_where}: no UDP port named tftp")
metrics_port = ports.get("metrics", {}).get("containerPort")
check(metrics_port is not None, f"{ds_where}: no port named metrics")
args = container.get("args", [])
check(f"--metrics=$(POD_IP):{metrics_port}" in args, f"{ds_where}: --metrics is not on the metrics port")
check(any(a.startswith("--user=") for a in args), f"{ds_where}: no --user to drop root")
env = {e["name"] for e in container.get("env", [])}
check("POD_IP" in env, f"{ds_where}: --metrics uses $(POD_IP) but no such env")
annotations = template["metadata"].get("annotations", {})
check(annotations.get("prometheus.io/scrape") == "true", f"{ds_where}: no scrape annotation")
check(annotations.get("prometheus.io/port") == str(metrics_port), f"{ds_where}: annotated port")
for probe in ("readinessProbe", "livenessProbe"):
    check(container.get(probe, {}).get("httpGet", {}).get("port") == "metrics",
          f"{ds_where}: {probe} is not on the metrics port")
sc = container["securityContext"]
check(sc.get("readOnlyRootFilesystem") is True, f"{ds_where}: root filesystem writable")
check(sc.get("allowPrivilegeEscalation") is False, f"{ds_where}: privilege escalation allowed")
check(sc.get("capabilities", {}).get("drop") == ["ALL"], f"{ds_where}: capabilities not dropped")
check(set(sc.get("capabilities", {}).get("add", [])) <= {"NET_BIND_SERVICE", "SETUID", "SETGID"},
      f"{ds_where}: more capabilities than binding 69 and --user need")
check(not sc.get("privileged"), f"{ds_where}: privileged")
check("memory" in container.get("resources", {}).get("limits", {}), f"{ds_where}: no memory limit")
mounts = {m["name"]: m for m in container["volumeMounts"]}
volumes = {v["name"]: v for v in pod["volumes"]}
served = [m for m in mounts.values() if m["mountPath"] == "/srv/tftp"]
check(len(served) == 1 and served[0].get("readOnly") is True,
      f"{ds_where}: /srv/tftp is not mounted read-only")
check(set(mounts) <= set(volumes), f"{ds_where}: a mount names no volume")

check(svc["spec"].get("clusterIP") == "None", f"{svc_where}: not headless")
check(svc["spec"]["selector"].items() <= pod_labels.items(), f"{svc_where}: selects no ringtftpd pod")
svc_ports = {p["name"]: p for p in svc["spec"]["ports"]}
check(svc_ports.get("metrics", {}).get("targetPort") in ("metrics", metrics_port),
      f"{svc_where}: the metrics port does not reach the pods' metrics port")
check(sm["spec"]["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items(),
      f"{sm_where}: selects no Service")
check(svc["metadata"]["namespace"] in sm["spec"]["namespaceSelector"]["matchNames"],
      f"{sm_where}: does not look in the Service's namespace")
check(all(e.get("port") in svc_ports for e in sm["spec"]["endpoints"]),
      f"{sm_where}: an endpoint names no port of the Service")

if errors:
    print("\n".join(errors), file=sys.stderr)
    sys.exit(1)
print(f"kubernetes: {len(docs)} documents parse and fit together "
      f"({', '.join(sorted(w.split(': ')[1] for w, _ in docs))})")
