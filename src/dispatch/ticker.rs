//! When the pool's periodic services run: each makes one pass every period until its stop
//! signal fires. What a pass does lives with the service (`leases`, `sweeper`).

use std::future::Future;
use std::time::Duration;

use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use super::Shared;

/// The periodic services.
#[derive(Clone, Copy, Debug)]
pub(super) enum Service {
    /// Extends this process's leases and saves the adapted provider rates.
    Heartbeater,
    /// Requeues the runs of a process that stopped heartbeating.
    Rescuer,
    /// Ends runs whose queue deadline passed before they started.
    Sweeper,
    /// Records this process's beat and holds the leader's lease.
    Steward,
    /// Deletes finished runs past their age.
    Retention,
    /// Marks batches whose runs have all ended finished.
    BatchFinisher,
}

impl Service {
    fn name(self) -> &'static str {
        match self {
            Service::Heartbeater => "heartbeater",
            Service::Rescuer => "rescuer",
            Service::Sweeper => "sweeper",
            Service::Steward => "steward",
            Service::Retention => "retention",
            Service::BatchFinisher => "batch finisher",
        }
    }

    fn period(self, shared: &Shared) -> Duration {
        let settings = &shared.settings;
        match self {
            Service::Heartbeater => settings.heartbeat_interval,
            Service::Rescuer => settings.rescue_interval,
            Service::Sweeper => settings.sweep_interval,
            Service::Steward => super::steward::period(settings.leader_lease),
            Service::Retention => shared.retention.interval,
            Service::BatchFinisher => settings.batch_finish_interval,
        }
    }

    /// The heartbeater runs until nothing is held any more, so the leases of attempts
    /// still draining at shutdown stay alive; the others stop with claiming.
    fn stop(self, shared: &Shared) -> &CancellationToken {
        match self {
            Service::Heartbeater => &shared.stop_services,
            Service::Rescuer
            | Service::Sweeper
            | Service::Steward
            | Service::Retention
            | Service::BatchFinisher => &shared.stop_claiming,
        }
    }

    /// When the first pass runs: the heartbeater's one period after start, as a lease
    /// taken since is fresh; the others' at once, to catch up on what waited while no
    /// process ran.
    fn first_pass(self, shared: &Shared) -> Instant {
        match self {
            Service::Heartbeater => Instant::now() + self.period(shared),
            Service::Rescuer | Service::Sweeper | Service::Steward | Service::BatchFinisher => {
                Instant::now()
            }
            // After the steward's first beat has settled who leads.
            Service::Retention => {
                Instant::now() + super::steward::period(shared.settings.leader_lease)
            }
        }
    }
}

/// Runs `pass` every period of `service` until its stop fires. A pass that overruns the
/// period delays the next one rather than bunching them up.
pub(super) async fn every<F, Fut>(service: Service, shared: &Shared, mut pass: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = ()>,
{
    let mut tick = tokio::time::interval_at(service.first_pass(shared), service.period(shared));
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let stop = service.stop(shared);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.cancelled() => break,
        }
        pass().await;
    }
    tracing::debug!("{} stopped", service.name());
}
