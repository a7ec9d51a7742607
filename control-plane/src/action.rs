//! The closed set of operations the control plane's API offers, each with
//! the role it needs and the name its audit records carry (firecracker's
//! `VmmAction`). A new route adds a variant here, so RBAC for the whole API
//! reads as one table.

use crate::auth::Role;

/// One operation of the REST API.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Action {
    // Identity, and the dashboard's sign-in and sign-out.
    WhoAmI,
    SessionCreate,
    SessionDelete,
    SessionLink,
    // Registry: models, versions, aliases.
    ModelList,
    ModelShow,
    ModelRegister,
    ModelDelete,
    VersionList,
    VersionShow,
    VersionDownload,
    VersionCompare,
    VersionArchive,
    VersionRestore,
    VersionDelete,
    AliasList,
    AliasSet,
    AliasDelete,
    // Projects, tokens, trust roots, the audit trail.
    ProjectList,
    ProjectCreate,
    TokenList,
    TokenCreate,
    TokenRevoke,
    TrustShow,
    TrustPush,
    AuditList,
    // Telemetry.
    DriftSeries,
    MetricSeries,
    DriftPolicyShow,
    DriftPolicySet,
    AlertList,
    AlertAck,
    TriggerList,
    DeviceHealthList,
    ChallengerShow,
    // Fleet.
    DeviceList,
    DeviceShow,
    DeviceCa,
    DeviceTokenCreate,
    DeviceTokenList,
    DeviceTokenRevoke,
    DeviceLabel,
    DeviceRevoke,
    DeploymentList,
    DeploymentShow,
    DeploymentCreate,
    DeploymentScale,
    DeploymentDelete,
    // Rollouts.
    RolloutList,
    RolloutShow,
    RolloutStart,
    RolloutPause,
    RolloutResume,
    RolloutApprove,
    RolloutAbort,
    RolloutPolicyList,
    RolloutPolicyShow,
    RolloutPolicyPut,
}

impl Action {
    /// Every action, for tests and documentation.
    pub const ALL: &'static [Action] = &[
        Action::WhoAmI,
        Action::SessionCreate,
        Action::SessionDelete,
        Action::SessionLink,
        Action::ModelList,
        Action::ModelShow,
        Action::ModelRegister,
        Action::ModelDelete,
        Action::VersionList,
        Action::VersionShow,
        Action::VersionDownload,
        Action::VersionCompare,
        Action::VersionArchive,
        Action::VersionRestore,
        Action::VersionDelete,
        Action::AliasList,
        Action::AliasSet,
        Action::AliasDelete,
        Action::ProjectList,
        Action::ProjectCreate,
        Action::TokenList,
        Action::TokenCreate,
        Action::TokenRevoke,
        Action::TrustShow,
        Action::TrustPush,
        Action::AuditList,
        Action::DriftSeries,
        Action::MetricSeries,
        Action::DriftPolicyShow,
        Action::DriftPolicySet,
        Action::AlertList,
        Action::AlertAck,
        Action::TriggerList,
        Action::DeviceHealthList,
        Action::ChallengerShow,
        Action::DeviceList,
        Action::DeviceShow,
        Action::DeviceCa,
        Action::DeviceTokenCreate,
        Action::DeviceTokenList,
        Action::DeviceTokenRevoke,
        Action::DeviceLabel,
        Action::DeviceRevoke,
        Action::DeploymentList,
        Action::DeploymentShow,
        Action::DeploymentCreate,
        Action::DeploymentScale,
        Action::DeploymentDelete,
        Action::RolloutList,
        Action::RolloutShow,
        Action::RolloutStart,
        Action::RolloutPause,
        Action::RolloutResume,
        Action::RolloutApprove,
        Action::RolloutAbort,
        Action::RolloutPolicyList,
        Action::RolloutPolicyShow,
        Action::RolloutPolicyPut,
    ];

    /// The least role that may perform this action (roles are ordered).
    pub fn required_role(self) -> Role {
        use Action::*;
        match self {
            WhoAmI | SessionCreate | SessionDelete | SessionLink | ModelList | ModelShow
            | VersionList | VersionShow | VersionDownload | VersionCompare | AliasList
            | ProjectList | TrustShow | DriftSeries | MetricSeries | DriftPolicyShow
            | AlertList | TriggerList | DeviceHealthList | ChallengerShow | DeviceList
            | DeviceShow | DeviceCa | DeploymentList | DeploymentShow | RolloutList
            | RolloutShow | RolloutPolicyList | RolloutPolicyShow => Role::Viewer,
            DriftPolicySet | AlertAck | DeviceTokenCreate | DeviceTokenList | DeviceTokenRevoke
            | DeviceLabel | DeviceRevoke | DeploymentCreate | DeploymentScale
            | DeploymentDelete | RolloutStart | RolloutPause | RolloutResume | RolloutApprove
            | RolloutAbort | RolloutPolicyPut => Role::Operator,
            ModelRegister | VersionArchive | VersionRestore | AliasSet | AliasDelete
            | ProjectCreate => Role::Publisher,
            ModelDelete | VersionDelete | TokenList | TokenCreate | TokenRevoke | TrustPush
            | AuditList => Role::Admin,
        }
    }

    /// The `action` field of this operation's audit records.
    pub fn audit_name(self) -> &'static str {
        use Action::*;
        match self {
            WhoAmI => "whoami",
            SessionCreate => "session.create",
            SessionDelete => "session.delete",
            SessionLink => "session.link",
            ModelList => "model.list",
            ModelShow => "model.show",
            ModelRegister => "model.register",
            ModelDelete => "model.delete",
            VersionList => "version.list",
            VersionShow => "version.show",
            VersionDownload => "version.download",
            VersionCompare => "version.compare",
            VersionArchive => "version.archive",
            VersionRestore => "version.restore",
            VersionDelete => "version.delete",
            AliasList => "alias.list",
            AliasSet => "alias.set",
            AliasDelete => "alias.delete",
            ProjectList => "project.list",
            ProjectCreate => "project.create",
            TokenList => "token.list",
            TokenCreate => "token.create",
            TokenRevoke => "token.revoke",
            TrustShow => "trust.show",
            TrustPush => "trust.push",
            AuditList => "audit.list",
            DriftSeries => "telemetry.drift",
            MetricSeries => "telemetry.metrics",
            DriftPolicyShow => "drift_policy.show",
            DriftPolicySet => "drift_policy.set",
            AlertList => "alert.list",
            AlertAck => "alert.ack",
            TriggerList => "trigger.list",
            DeviceHealthList => "device_health.list",
            ChallengerShow => "telemetry.challenger",
            DeviceList => "device.list",
            DeviceShow => "device.show",
            DeviceCa => "device.ca",
            DeviceTokenCreate => "device.token.create",
            DeviceTokenList => "device.token.list",
            DeviceTokenRevoke => "device.token.revoke",
            DeviceLabel => "device.label",
            DeviceRevoke => "device.revoke",
            DeploymentList => "deployment.list",
            DeploymentShow => "deployment.show",
            DeploymentCreate => "deployment.create",
            DeploymentScale => "deployment.scale",
            DeploymentDelete => "deployment.delete",
            RolloutList => "rollout.list",
            RolloutShow => "rollout.show",
            RolloutStart => "rollout.start",
            RolloutPause => "rollout.pause",
            RolloutResume => "rollout.resume",
            RolloutApprove => "rollout.approve",
            RolloutAbort => "rollout.abort",
            RolloutPolicyList => "rollout_policy.list",
            RolloutPolicyShow => "rollout_policy.show",
            RolloutPolicyPut => "rollout_policy.put",
        }
    }

    /// The one refusal message for a role below [`Self::required_role`].
    pub fn refusal(self, have: Role) -> String {
        format!(
            "role {have} may not {} (needs {} or above)",
            self.audit_name(),
            self.required_role()
        )
    }
}

impl std::fmt::Display for Action {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.audit_name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn audit_names_are_unique() {
        let mut names: Vec<_> = Action::ALL.iter().map(|a| a.audit_name()).collect();
        names.sort_unstable();
        let n = names.len();
        names.dedup();
        assert_eq!(names.len(), n);
    }

    #[test]
    fn refusals_name_both_roles() {
        assert_eq!(
            Action::TrustPush.refusal(Role::Viewer),
            "role viewer may not trust.push (needs admin or above)"
        );
    }
}
