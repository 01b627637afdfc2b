"""Drives the server with the official Kubernetes Python client (pip `kubernetes`), as an
operator's script would: for every kind the server serves, create, list with a label
selector, watch, replace with a stale resourceVersion (409), replace, and delete.

Usage: kube_client.py KUBECONFIG. Prints one line per kind and exits non-zero on the first
failed expectation (the assertion names the kind and the step).
"""

import sys
import threading

from kubernetes import client, config, watch
from kubernetes.client.rest import ApiException

GROUP, VERSION = "groundwork.dev", "v1alpha1"
LABELS = {"suite": "python-client"}


def custom(kind, plural, spec):
    return {"kind": kind, "plural": plural, "spec": spec}


# One valid object per groundwork kind (cluster-scoped custom resources).
CUSTOM = [
    custom("Datacenter", "datacenters", {"availabilityZones": [{"name": "az1"}]}),
    custom("Rack", "racks", {"datacenter": "py-dc", "availabilityZone": "az1", "heightU": 42}),
    custom("Node", "nodes", {"online": False, "bootMACs": ["52:54:00:aa:00:01"]}),
    custom("Profile", "profiles", {"priority": 1}),
    custom("ServiceStack", "servicestacks", {
        "datacenter": "py-dc",
        "layers": [{"name": "secrets", "services": ["vault"]}]}),
    custom("ServiceInstance", "serviceinstances", {
        "stack": "py-stack", "layer": "metrics", "service": "prometheus", "node": "py-node",
        "configDigest": "sha256:" + "0" * 64,
        "run": {"command": ["/bin/true"]}}),
    custom("Credential", "credentials", {"username": "admin", "password": "py-secret-pw"}),
    custom("GitSource", "gitsources", {"url": "https://git.example.invalid/ops/infra.git",
                                       "suspend": True}),
]


def expect_status(what, code, fn):
    try:
        fn()
    except ApiException as e:
        assert e.status == code, f"{what}: expected HTTP {code}, got {e.status}: {e.body}"
        return e
    raise AssertionError(f"{what}: expected HTTP {code}, the call succeeded")


def watch_sees(what, list_fn, name, rv, create):
    """Starts a watch at `rv`, then creates; the watch must deliver ADDED for `name`."""
    seen = {}
    w = watch.Watch()

    def run():
        for ev in w.stream(list_fn, resource_version=rv, timeout_seconds=20):
            obj = ev["object"]
            meta = obj["metadata"] if isinstance(obj, dict) else obj.metadata.to_dict()
            if ev["type"] == "ADDED" and meta["name"] == name:
                seen["rv"] = meta["resource_version"] if "resource_version" in meta else meta["resourceVersion"]
                w.stop()
                return

    t = threading.Thread(target=run, daemon=True)
    t.start()
    created = create()
    t.join(25)
    assert "rv" in seen, f"{what}: the watch from {rv} did not deliver ADDED {name}"
    return created


def check_custom(api, k):
    kind, plural, name = k["kind"], k["plural"], f"py-{k['kind'].lower()}"
    body = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": kind,
        "metadata": {"name": name, "labels": LABELS},
        "spec": k["spec"],
    }
    listed = api.list_cluster_custom_object(GROUP, VERSION, plural)
    rv = listed["metadata"]["resourceVersion"]

    def lister(**kw):
        return api.list_cluster_custom_object(GROUP, VERSION, plural, **kw)

    created = watch_sees(kind, lister, name, rv,
                         lambda: api.create_cluster_custom_object(GROUP, VERSION, plural, body))
    assert created["metadata"]["name"] == name, f"{kind}: create answered {created}"
    if kind == "Credential":
        assert "password" not in created["spec"], f"{kind}: the password came back"
    sel = api.list_cluster_custom_object(GROUP, VERSION, plural, label_selector="suite=python-client")
    assert [i["metadata"]["name"] for i in sel["items"]] == [name], f"{kind}: selector list {sel['items']}"
    none = api.list_cluster_custom_object(GROUP, VERSION, plural, label_selector="suite=other")
    assert none["items"] == [], f"{kind}: a non-matching selector listed {none['items']}"

    current = api.get_cluster_custom_object(GROUP, VERSION, plural, name)
    fresh = dict(current)
    fresh["metadata"] = dict(current["metadata"])
    fresh["metadata"]["labels"] = {**LABELS, "step": "replaced"}
    replaced = api.replace_cluster_custom_object(GROUP, VERSION, plural, name, fresh)
    assert replaced["metadata"]["labels"]["step"] == "replaced", f"{kind}: replace {replaced}"
    # `current` now carries a stale resourceVersion.
    expect_status(f"{kind} stale replace", 409,
                  lambda: api.replace_cluster_custom_object(GROUP, VERSION, plural, name, current))
    api.delete_cluster_custom_object(GROUP, VERSION, plural, name)
    expect_status(f"{kind} get after delete", 404,
                  lambda: api.get_cluster_custom_object(GROUP, VERSION, plural, name))
    print(f"ok {kind}")


def check_typed(kind, create, get, lst, replace, delete, make):
    """The same steps through a typed API (built-in kinds)."""
    name = f"py-{kind.lower()}"
    rv = lst().metadata.resource_version
    created = watch_sees(kind, lst, name, rv, lambda: create(make(name)))
    assert created.metadata.name == name, f"{kind}: create answered {created}"
    sel = lst(label_selector="suite=python-client")
    assert [i.metadata.name for i in sel.items] == [name], f"{kind}: selector list"
    assert lst(label_selector="suite=other").items == [], f"{kind}: non-matching selector"
    current = get(name)
    stale_rv = current.metadata.resource_version
    current.metadata.labels = {**LABELS, "step": "replaced"}
    replaced = replace(name, current)
    assert replaced.metadata.labels["step"] == "replaced", f"{kind}: replace"
    current.metadata.resource_version = stale_rv
    expect_status(f"{kind} stale replace", 409, lambda: replace(name, current))
    delete(name)
    expect_status(f"{kind} get after delete", 404, lambda: get(name))
    print(f"ok {kind}")


def main():
    config.load_kube_config(config_file=sys.argv[1])
    api = client.CustomObjectsApi()
    for k in CUSTOM:
        check_custom(api, k)

    meta = lambda name: client.V1ObjectMeta(name=name, labels=dict(LABELS))  # noqa: E731
    rbac = client.RbacAuthorizationV1Api()
    check_typed(
        "ClusterRole", rbac.create_cluster_role, rbac.read_cluster_role,
        rbac.list_cluster_role, rbac.replace_cluster_role, rbac.delete_cluster_role,
        lambda n: client.V1ClusterRole(metadata=meta(n), rules=[client.V1PolicyRule(
            api_groups=[GROUP], resources=["nodes"], verbs=["get", "list"])]))
    check_typed(
        "ClusterRoleBinding", rbac.create_cluster_role_binding, rbac.read_cluster_role_binding,
        rbac.list_cluster_role_binding, rbac.replace_cluster_role_binding,
        rbac.delete_cluster_role_binding,
        lambda n: client.V1ClusterRoleBinding(
            metadata=meta(n),
            role_ref=client.V1RoleRef(api_group="rbac.authorization.k8s.io", kind="ClusterRole", name="view"),
            subjects=[client.RbacV1Subject(kind="User", name="py-user", api_group="rbac.authorization.k8s.io")]))

    ns = "default"
    coord = client.CoordinationV1Api()
    check_typed(
        "Lease",
        lambda b: coord.create_namespaced_lease(ns, b),
        lambda n: coord.read_namespaced_lease(n, ns),
        lambda **kw: coord.list_namespaced_lease(ns, **kw),
        lambda n, b: coord.replace_namespaced_lease(n, ns, b),
        lambda n: coord.delete_namespaced_lease(n, ns),
        lambda n: client.V1Lease(metadata=meta(n), spec=client.V1LeaseSpec(
            holder_identity="py", lease_duration_seconds=15)))
    core = client.CoreV1Api()
    check_typed(
        "Event",
        lambda b: core.create_namespaced_event(ns, b),
        lambda n: core.read_namespaced_event(n, ns),
        lambda **kw: core.list_namespaced_event(ns, **kw),
        lambda n, b: core.replace_namespaced_event(n, ns, b),
        lambda n: core.delete_namespaced_event(n, ns),
        lambda n: client.CoreV1Event(
            metadata=client.V1ObjectMeta(name=n, namespace=ns, labels=dict(LABELS)),
            involved_object=client.V1ObjectReference(kind="Node", name="py-node"),
            reason="Tested", message="from the Python client", type="Normal"))
    print("all kinds passed")


if __name__ == "__main__":
    main()
