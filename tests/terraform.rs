//! The request sequence of Terraform's `kubernetes_manifest` (hashicorp/kubernetes provider,
//! manifest/provider: clients.go, resource.go, plan.go, apply.go), replayed against a real
//! server: no Terraform binary is reachable from here, so the test makes the provider's
//! calls in its order, with its parameters and media types, and checks what the provider
//! relies on in each answer.

mod support;

use serde_json::Value;
use support::Server;

const RACK: &str = "/apis/groundwork.dev/v1alpha1/racks";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terraform_kubernetes_manifest_plans_applies_updates_and_destroys() {
    let s = Server::start();
    let c = support::https_client();
    let url = |p: &str| format!("{}{p}", s.url);
    let get = |p: String| {
        let c = c.clone();
        async move {
            let r = c.get(p).send().await.unwrap();
            let code = r.status().as_u16();
            (code, r.json::<Value>().await.unwrap_or(Value::Null))
        }
    };
    // 1. Credentials check.
    let (code, apis) = get(url("/apis")).await;
    assert_eq!(code, 200);
    let groups: Vec<&str> = apis["groups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["name"].as_str().unwrap())
        .collect();
    assert!(
        groups.contains(&"groundwork.dev") && groups.contains(&"apiextensions.k8s.io"),
        "{groups:?}"
    );
    // 2. The OpenAPI v2 document: always fetched, must parse as Swagger 2.0.
    let (code, v2) = get(url("/openapi/v2")).await;
    assert_eq!(code, 200);
    assert_eq!(v2["swagger"], "2.0");
    // 3. The RESTMapper's discovery, then the CRD list the schema comes from.
    let (code, rl) = get(url("/apis/apiextensions.k8s.io/v1")).await;
    assert_eq!(code, 200);
    assert_eq!(rl["resources"][0]["kind"], "CustomResourceDefinition");
    let (code, crds) = get(url(
        "/apis/apiextensions.k8s.io/v1/customresourcedefinitions",
    ))
    .await;
    assert_eq!(code, 200);
    let rack = crds["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["spec"]["group"] == "groundwork.dev" && c["spec"]["names"]["kind"] == "Rack")
        .expect("the Rack CRD");
    let schema = rack["spec"]["versions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "v1alpha1")
        .unwrap()["schema"]["openAPIV3Schema"]
        .clone();
    assert!(
        schema["properties"]["spec"]["properties"]["datacenter"].is_object(),
        "{schema}"
    );
    let (code, one) = get(url(
        "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/racks.groundwork.dev",
    ))
    .await;
    assert_eq!(code, 200, "{one}");
    // Read-only: the kinds are built in.
    let r = c
        .delete(url(
            "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/racks.groundwork.dev",
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 405);

    let ssa = |query: &'static str, body: String| {
        let c = c.clone();
        let u = url(&format!(
            "{RACK}/tf-rack?fieldManager=Terraform&force=true{query}"
        ));
        async move {
            let r = c
                .patch(u)
                .header("Content-Type", "application/apply-patch+yaml")
                .body(body)
                .send()
                .await
                .unwrap();
            let code = r.status().as_u16();
            (code, r.json::<Value>().await.unwrap_or(Value::Null))
        }
    };
    let dc = "apiVersion: groundwork.dev/v1alpha1\nkind: Datacenter\nmetadata:\n  name: tf-dc\nspec:\n  availabilityZones:\n  - name: az1\n";
    let r = c
        .patch(url(
            "/apis/groundwork.dev/v1alpha1/datacenters/tf-dc?fieldManager=Terraform&force=true",
        ))
        .header("Content-Type", "application/apply-patch+yaml")
        .body(dc)
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.text().await.unwrap());
    let manifest = |location: &str| {
        format!(
            "apiVersion: groundwork.dev/v1alpha1\nkind: Rack\nmetadata:\n  name: tf-rack\nspec:\n  datacenter: tf-dc\n  availabilityZone: az1\n  location: {location}\n"
        )
    };
    // 4. Plan: a server-side dry run; nothing is stored.
    let (code, planned) = ssa("&dryRun=All", manifest("row A")).await;
    assert!(code == 200 || code == 201, "{code}: {planned}");
    assert_eq!(planned["spec"]["location"], "row A");
    let (code, _) = get(url(&format!("{RACK}/tf-rack"))).await;
    assert_eq!(code, 404, "the dry run stored the object");
    // 5. Apply.
    let (code, created) = ssa("", manifest("row A")).await;
    assert!(code == 200 || code == 201, "{code}: {created}");
    let owners = created["metadata"]["managedFields"].to_string();
    assert!(
        owners.contains("\"Terraform\"") && owners.contains("\"Apply\""),
        "{owners}"
    );
    // 6. Update (a changed attribute): plan, then apply.
    let (code, planned) = ssa("&dryRun=All", manifest("row B")).await;
    assert_eq!(code, 200, "{planned}");
    assert_eq!(
        get(url(&format!("{RACK}/tf-rack"))).await.1["spec"]["location"],
        "row A"
    );
    let (code, updated) = ssa("", manifest("row B")).await;
    assert_eq!(code, 200, "{updated}");
    assert_eq!(updated["spec"]["location"], "row B");
    // Someone else's change to a field Terraform owns: Terraform's forced apply takes it back.
    let r = c
        .patch(url(&format!("{RACK}/tf-rack?fieldManager=kubectl-edit")))
        .header("Content-Type", "application/merge-patch+json")
        .body(r#"{"spec":{"location":"row C"}}"#)
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());
    let (code, back) = ssa("", manifest("row B")).await;
    assert_eq!(code, 200, "{back}");
    assert_eq!(back["spec"]["location"], "row B");
    // 7. Destroy.
    let r = c
        .delete(url(&format!("{RACK}/tf-rack")))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());
    let (code, _) = get(url(&format!("{RACK}/tf-rack"))).await;
    assert_eq!(code, 404);
}
