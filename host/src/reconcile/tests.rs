use super::*;

fn resource(policy: RestartPolicy, image: &str) -> Resource {
    let mut spec = SandboxSpec::new(image.into());
    spec.restart_policy = policy;
    Resource { name: "s".into(), labels: Default::default(), spec: ResourceSpec::Sandbox(spec) }
}

fn row(of: &Resource, status: Status, user_stopped: bool) -> SandboxRow {
    SandboxRow {
        name: "s".into(),
        instance: "s-1".into(),
        spec: of.canonical_json(),
        status,
        isolation: "namespace".into(),
        shim_pid: None,
        exit_code: None,
        restarts: 0,
        message: None,
        user_stopped,
        created_at: now(),
        started_at: None,
        finished_at: None,
    }
}

#[test]
fn what_exists_and_what_is_desired_decide_create_remove_replace() {
    let r = resource(RestartPolicy::Always, "dir:/a");
    assert_eq!(decide(None, None), Decision::Nothing);
    assert_eq!(decide(Some(&r), None), Decision::Create);
    assert_eq!(decide(None, Some(&row(&r, Status::Running, false))), Decision::Remove);
    let changed = resource(RestartPolicy::Always, "dir:/b");
    assert_eq!(decide(Some(&changed), Some(&row(&r, Status::Running, false))), Decision::Replace);
    assert_eq!(decide(Some(&changed), Some(&row(&r, Status::Stopped, true))), Decision::Replace, "a new spec applies even to a stopped sandbox");
    assert_eq!(decide(Some(&r), Some(&row(&r, Status::Running, false))), Decision::Nothing, "converging is idempotent");
}

#[test]
fn restart_policies_decide_restarts_and_a_user_stop_holds() {
    use RestartPolicy::*;
    for (policy, status, user_stopped, expected) in [
        (Always, Status::Failed, false, Decision::Restart),
        (Always, Status::Stopped, false, Decision::Restart),
        (Always, Status::Stopped, true, Decision::Nothing),
        (Always, Status::Failed, true, Decision::Nothing),
        (Always, Status::Exited, false, Decision::Nothing),
        (OnFailure, Status::Failed, false, Decision::Restart),
        (OnFailure, Status::Stopped, false, Decision::Nothing),
        (Never, Status::Failed, false, Decision::Nothing),
        (Never, Status::Pending, false, Decision::Restart),
    ] {
        let r = resource(policy, "dir:/a");
        assert_eq!(decide(Some(&r), Some(&row(&r, status, user_stopped))), expected, "{policy:?} {status:?} user_stopped={user_stopped}");
    }
}

/// The reconciler over the fake runtime: everything but the shims is real (the store, the
/// locks, the plan, the image resolution of a `dir:` image).
mod converge {
    use super::*;
    use crate::runtime::fake::FakeInstances;

    struct Harness {
        _tmp: tempfile::TempDir,
        rootfs: std::path::PathBuf,
        fake: Arc<FakeInstances>,
        orch: Orchestrator,
    }

    fn harness() -> Harness {
        let tmp = tempfile::tempdir().expect("a temporary directory");
        let rootfs = tmp.path().join("rootfs");
        std::fs::create_dir(&rootfs).expect("the rootfs directory");
        let mut orch = Orchestrator::open(Config::new(tmp.path().join("data"))).expect("the orchestrator");
        let fake = Arc::new(FakeInstances::default());
        orch.instances = fake.clone();
        Harness { _tmp: tmp, rootfs, fake, orch }
    }

    impl Harness {
        fn manifests(&self, yaml_spec: &str) -> Vec<Manifest> {
            let text = format!("apiVersion: orchestrator/v1\nkind: Sandbox\nmetadata: {{ name: web }}\nspec:\n  image: dir:{}\n{yaml_spec}", self.rootfs.display());
            crate::spec::parse_str(&self.rootfs.join("web.yaml"), &text).expect("a valid manifest")
        }

        fn apply(&mut self, yaml_spec: &str) -> ApplyReport {
            let manifests = self.manifests(yaml_spec);
            self.orch.apply("test", &manifests, false).expect("apply")
        }

        fn row(&self) -> SandboxRow {
            self.orch.store.sandbox("web").expect("the store").expect("a row for web")
        }

        fn dir(&self) -> InstanceDir {
            self.orch.instance_dir(&self.row())
        }

        fn reasons(&self) -> Vec<String> {
            self.orch.store.events(Some("Sandbox/web"), 100).expect("events").into_iter().map(|e| e.reason).collect()
        }
    }

    #[test]
    fn the_sweep_removes_lock_files_of_gone_names_and_keeps_those_in_use_or_held() {
        let mut h = harness();
        h.apply("  isolation: namespace\n");
        let lock_of = |name: &str| h.orch.data.object_lock(name).expect("a lock path");
        // Names used once and let go (as a pool's and `/run`'s are), one held right now, and
        // one a client typed that no object may have.
        for name in ["pool-0123abcd", "run-1", "Not A Name"] {
            drop(h.orch.lock_object(name).expect("lock"));
        }
        let held = h.orch.lock_object("busy").expect("lock");
        drop(h.orch.lock_object("web").expect("lock"));
        assert_eq!(h.orch.sweep_object_locks().expect("sweep"), 3);
        assert!(!lock_of("pool-0123abcd").exists() && !lock_of("run-1").exists() && !lock_of("Not A Name").exists());
        assert!(lock_of("web").exists(), "a sandbox's own lock file stays");
        assert!(lock_of("busy").exists(), "a held lock's file stays");
        // The held lock still excludes others, and a swept name locks again as before.
        assert!(h.orch.try_lock_object("busy").is_none());
        drop(held);
        let again = h.orch.lock_object("run-1").expect("lock again");
        assert!(h.orch.try_lock_object("run-1").is_none(), "the new file is the lock");
        drop(again);
    }

    #[test]
    fn apply_starts_an_instance_once_and_converging_again_changes_nothing() {
        let mut h = harness();
        let report = h.apply("  isolation: namespace\n");
        assert_eq!(report.actions.len(), 1);
        assert_eq!(report.actions[0].result, ActionResult::Created);
        let row = h.row();
        assert_eq!(row.status, Status::Running);
        assert_eq!(row.isolation, "namespace");
        assert!(row.shim_pid.is_some(), "the shim's pid is recorded from its state");
        assert_eq!(h.fake.starts(), vec![(row.instance.clone(), Isolation::Namespace)]);
        assert_eq!(h.orch.converge("web").expect("converge"), Outcome::Nothing);
        assert_eq!(h.apply("  isolation: namespace\n").actions[0].result, ActionResult::Unchanged);
        assert_eq!(h.fake.starts().len(), 1, "an unchanged, running sandbox is left alone");
        assert_eq!(h.reasons(), ["Created", "Started"]);
    }

    #[test]
    fn a_changed_spec_replaces_the_instance_and_a_pruned_resource_removes_it() {
        let mut h = harness();
        h.apply("  env: {A: '1'}\n");
        let first = h.row().instance;
        assert_eq!(h.apply("  env: {A: '2'}\n").actions[0].result, ActionResult::Recreated);
        let second = h.row().instance;
        assert_ne!(first, second, "a new spec gets a new instance");
        assert_eq!(h.fake.stops(), vec![first.clone()], "the old instance was stopped before the new one started");
        // An empty source prunes nothing unless asked.
        assert!(h.orch.apply("test", &[], false).expect("apply").actions.is_empty());
        assert_eq!(h.row().instance, second);
        let report = h.orch.apply("test", &[], true).expect("apply");
        assert_eq!(report.actions[0].result, ActionResult::Removed);
        assert!(h.orch.store.sandbox("web").expect("the store").is_none());
        assert_eq!(h.fake.stops(), vec![first, second]);
    }

    #[test]
    fn a_failed_instance_restarts_under_its_policy_and_a_user_stop_holds() {
        let mut h = harness();
        h.apply("  restartPolicy: OnFailure\n");
        let instance = h.row().instance;
        h.fake.exit(&h.dir(), 3);
        assert_eq!(h.orch.converge("web").expect("converge"), Outcome::Restarted);
        assert_eq!(h.row().status, Status::Running);
        assert_eq!(h.row().instance, instance, "a restart keeps the instance (and its writable layer)");
        // A shim that dies without a word counts as a failure too.
        h.fake.kill_shim(&h.dir());
        assert_eq!(h.orch.converge("web").expect("converge"), Outcome::Restarted);
        // An exit the policy accepts stays down.
        h.fake.exit(&h.dir(), 0);
        assert_eq!(h.orch.converge("web").expect("converge"), Outcome::Nothing);
        assert_eq!(h.row().status, Status::Exited);
        assert_eq!(h.row().exit_code, Some(0));
        // Started by hand, then stopped by a user: no policy brings it back.
        h.orch.start("web").expect("start");
        h.orch.stop("web").expect("stop");
        h.fake.exit(&h.dir(), 1);
        assert_eq!(h.orch.converge("web").expect("converge"), Outcome::Nothing);
        assert!(h.row().user_stopped);
        assert_eq!(h.fake.starts().len(), 4);
    }

    #[test]
    fn a_start_that_fails_is_recorded_with_its_cause_and_retried_by_the_next_reconcile() {
        let mut h = harness();
        h.fake.fail_next_start(crate::runtime::RuntimeError::Unavailable("microvm", "/dev/kvm is missing".into()));
        let manifests = h.manifests("  isolation: microvm\n");
        let report = h.orch.apply("test", &manifests, false).expect("apply records the desired state");
        assert!(matches!(&report.actions[0].result, ActionResult::Failed { message } if message.contains("/dev/kvm is missing")));
        let row = h.row();
        assert_eq!(row.status, Status::Failed);
        assert!(row.message.as_deref().is_some_and(|m| m.contains("/dev/kvm is missing")), "{row:?}");
        assert_eq!(h.reasons().last().map(String::as_str), Some("FailedToStart"));
        // The same failure through converge keeps its kind for callers that map it.
        h.fake.fail_next_start(crate::runtime::RuntimeError::Unavailable("microvm", "/dev/kvm is missing".into()));
        let err = crate::Error::from(h.orch.converge("web").expect_err("the start fails again"));
        assert_eq!(err.kind(), crate::ErrorKind::IsolationUnavailable);
        // Once the host can, the next reconcile starts it.
        assert_eq!(h.orch.converge("web").expect("converge"), Outcome::Restarted);
        assert_eq!(h.row().status, Status::Running);
        assert_eq!(h.fake.starts().len(), 1);
    }

    #[test]
    fn auto_takes_what_the_host_offers_and_an_instance_keeps_its_kind() {
        let mut h = harness();
        h.fake.set_microvm_available(true);
        h.apply("");
        assert_eq!(h.row().isolation, "microvm");
        // The host loses KVM; the instance's disks were made for a microVM, so it restarts as one.
        h.fake.set_microvm_available(false);
        h.fake.exit(&h.dir(), 1);
        assert_eq!(h.orch.converge("web").expect("converge"), Outcome::Restarted);
        assert_eq!(h.fake.starts().iter().map(|s| s.1).collect::<Vec<_>>(), [Isolation::Microvm, Isolation::Microvm]);
        // A new instance is placed anew.
        h.apply("  env: {A: '1'}\n");
        assert_eq!(h.row().isolation, "namespace");
    }

    #[test]
    fn a_shim_left_by_a_killed_command_is_adopted_not_started_twice() {
        let mut h = harness();
        let manifests = h.manifests("");
        {
            let _lock = h.orch.lock().expect("lock");
            h.orch.commit("test", &manifests, false).expect("commit");
        }
        // What a `run` killed between recording its instance and hearing READY leaves.
        let resource = h.orch.store.resource(Kind::Sandbox, "web").expect("the store").expect("the resource").resource;
        let pending = SandboxRow {
            name: "web".into(),
            instance: "web-0001".into(),
            spec: resource.canonical_json(),
            status: Status::Pending,
            isolation: "namespace".into(),
            shim_pid: None,
            exit_code: None,
            restarts: 0,
            message: None,
            user_stopped: false,
            created_at: now(),
            started_at: None,
            finished_at: None,
        };
        h.orch.store.insert_sandbox(&pending).expect("insert");
        h.fake.adopt_running(&h.dir());
        assert_eq!(h.orch.converge("web").expect("converge"), Outcome::Nothing);
        assert_eq!(h.row().status, Status::Running);
        assert!(h.fake.starts().is_empty(), "the live shim was adopted");
        // Adopted, it is like any other: a shim that dies is restarted under the policy.
        h.fake.kill_shim(&h.dir());
        assert_eq!(h.orch.converge("web").expect("converge"), Outcome::Restarted);
        assert_eq!(h.fake.starts().len(), 1);
    }
}
