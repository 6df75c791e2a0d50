"""The autoscaler's rule on synthetic traffic and time: steps, ramps, bursts, limits and zero."""

from dataclasses import dataclass

from placements.autoscaling import decide, stabilised_recommendation
from placements.traffic import TrafficWindow


@dataclass
class Policy:
    target_concurrency: float = 10.0
    target_utilization: float = 1.0
    window_s: int = 60
    scale_down_delay_s: int = 300
    max_scale_down_fraction: float = 0.5
    scale_to_zero: bool = False
    seconds_per_request: float = 1.0


def window(rps: float, in_flight: float | None = None) -> TrafficWindow:
    return TrafficWindow(requests_per_second=rps, in_flight=in_flight, by_origin={"": rps}, samples=3)


class Run:
    """Feed ``decide`` one traffic value per step, carrying replicas and state as autoscale_pass does."""

    def __init__(self, policy: Policy, *, replicas: int, min_replicas: int = 1, max_replicas: int = 50):
        self.policy = policy
        self.replicas = replicas
        self.min_replicas = min_replicas
        self.max_replicas = max_replicas
        self.state: dict = {}
        self.last = None

    def step(self, now: float, traffic: TrafficWindow | None) -> int:
        self.last = decide(
            self.policy,
            current=self.replicas,
            min_replicas=self.min_replicas,
            max_replicas=self.max_replicas,
            traffic=traffic,
            state=self.state,
            now=now,
        )
        self.replicas, self.state = self.last.replicas, self.last.state
        return self.replicas

    def follow(self, trace: list[tuple[float, float | None]]) -> list[int]:
        """Run (time, rps or None for no samples) pairs; return the replicas after each."""
        return [self.step(now, None if rps is None else window(rps)) for now, rps in trace]


def test_step_up_is_immediate():
    run = Run(Policy(), replicas=1)
    assert run.step(0, window(5)) == 1
    assert run.step(15, window(95)) == 10
    assert run.last.measurements["recommendation"] == 10
    assert "scaled up from 1 to 10" in run.last.reason


def test_in_flight_preferred_over_rps():
    run = Run(Policy(seconds_per_request=2.0), replicas=1)
    assert run.step(0, window(10, in_flight=41)) == 5
    assert run.last.measurements["concurrency_source"] == "in_flight"
    run = Run(Policy(seconds_per_request=2.0), replicas=1)
    assert run.step(0, window(10)) == 2
    assert run.last.measurements["concurrency"] == 20


def test_utilization_target_adds_headroom():
    run = Run(Policy(target_utilization=0.5), replicas=1)
    assert run.step(0, window(40)) == 8


def test_step_down_waits_for_delay():
    run = Run(Policy(scale_down_delay_s=300, max_scale_down_fraction=1.0), replicas=1)
    run.step(0, window(100))
    trace = [(t, 10.0) for t in range(15, 316, 15)]
    replicas = run.follow(trace)
    # The need fell to 1 at t=15; 10 replicas stay until the lower need has lasted 300 s (t=315).
    assert replicas[:-1] == [10] * (len(trace) - 1)
    assert replicas[-1] == 1


def test_scale_down_delay_reported_as_limit():
    run = Run(Policy(scale_down_delay_s=300), replicas=1)
    run.step(0, window(100))
    run.step(60, window(10))
    assert run.replicas == 10
    assert run.last.limits == ["scale_down_delay"]
    assert "held at 10" in run.last.reason


def test_scale_down_rate_limited_per_minute():
    run = Run(Policy(scale_down_delay_s=0, max_scale_down_fraction=0.5), replicas=1)
    run.step(0, window(160))
    assert run.replicas == 16
    replicas = run.follow([(10, 10.0), (20, 10.0), (70, 10.0), (130, 10.0), (190, 10.0), (250, 10.0)])
    # At most half of the count at the start of each 60 s period goes: 16 -> 8, hold, 4, 2, 1.
    assert replicas == [8, 8, 4, 2, 1, 1]


def test_scale_down_rate_removes_at_least_one():
    run = Run(Policy(scale_down_delay_s=0, max_scale_down_fraction=0.1), replicas=5, min_replicas=1)
    assert run.step(0, window(10)) == 4
    assert run.last.limits == ["scale_down_rate"]
    assert run.step(30, window(10)) == 4
    assert run.step(61, window(10)) == 3


def test_ramp_up_tracks_demand():
    run = Run(Policy(), replicas=1)
    replicas = run.follow([(t * 15, 10.0 * t + 5) for t in range(8)])
    assert replicas == [1, 2, 3, 4, 5, 6, 7, 8]


def test_ramp_down_follows_after_delay():
    run = Run(Policy(scale_down_delay_s=120, max_scale_down_fraction=1.0), replicas=8)
    # Demand falls by 10 rps every 30 s from 80 rps.
    replicas = run.follow([(t * 30, 80.0 - 10 * t) for t in range(9)])
    # Each step's count is the highest need of the last 120 s: the need 4 steps earlier, clipped at 8.
    assert replicas == [8, 8, 8, 8, 8, 7, 6, 5, 4]


def test_burst_scales_up_and_stays_for_delay():
    run = Run(Policy(scale_down_delay_s=180, max_scale_down_fraction=1.0), replicas=2)
    trace = [(0, 20.0), (15, 20.0), (30, 200.0), (45, 20.0), (60, 20.0), (200, 20.0), (225, 20.0)]
    assert run.follow(trace) == [2, 2, 20, 20, 20, 20, 2]


def test_max_replicas_caps_burst():
    run = Run(Policy(), replicas=2, max_replicas=6)
    assert run.step(0, window(500)) == 6
    assert run.last.limits == ["max_replicas"]
    assert run.last.measurements["raw_recommendation"] == 50
    assert "needs 50, capped at max_replicas 6: scaled up from 2 to 6" in run.last.reason


def test_reason_names_min_replicas_floor():
    run = Run(Policy(scale_down_delay_s=0, max_scale_down_fraction=1.0), replicas=5, min_replicas=3)
    run.step(0, window(12))
    assert "needs 2, raised to min_replicas 3: scaled down from 5 to 3" in run.last.reason


def test_reason_without_bound_names_only_the_need():
    run = Run(Policy(), replicas=1)
    run.step(0, window(25))
    assert run.last.reason.endswith("needs 3: scaled up from 1 to 3")


def test_min_replicas_floor_without_traffic():
    run = Run(Policy(scale_down_delay_s=0, max_scale_down_fraction=1.0), replicas=5, min_replicas=3)
    assert run.step(0, window(0)) == 3
    assert run.last.limits == ["min_replicas"]


def test_zero_traffic_keeps_one_without_scale_to_zero():
    run = Run(Policy(scale_down_delay_s=0), replicas=1, min_replicas=0)
    assert run.step(0, window(0)) == 1
    assert run.step(500, window(0)) == 1


def test_scale_to_zero_after_delay_of_zero_traffic():
    policy = Policy(scale_down_delay_s=120, scale_to_zero=True, max_scale_down_fraction=1.0)
    run = Run(policy, replicas=1, min_replicas=0)
    replicas = run.follow([(0, 3.0), (30, 0.0), (60, 0.0), (120, 0.0), (149, 0.0), (151, 0.0)])
    # Zero traffic from t=30; the last non-zero need is in force until then, so zero comes at t>150.
    assert replicas == [1, 1, 1, 1, 1, 0]


def test_scale_from_zero_on_any_traffic():
    policy = Policy(scale_to_zero=True, target_concurrency=100.0)
    run = Run(policy, replicas=0, min_replicas=0)
    assert run.step(0, window(0)) == 0
    assert run.step(15, window(0.01)) == 1
    assert "scaled up from 0 to 1" in run.last.reason


def test_in_flight_zero_with_requests_still_needs_one():
    policy = Policy(scale_to_zero=True)
    run = Run(policy, replicas=0, min_replicas=0)
    assert run.step(0, window(0.5, in_flight=0.0)) == 1


def test_missing_telemetry_never_scales_down():
    run = Run(Policy(scale_down_delay_s=0, max_scale_down_fraction=1.0), replicas=6)
    assert run.step(0, None) == 6
    assert "no traffic samples in the last 60 s" in run.last.reason
    assert run.last.limits == ["no_telemetry"]
    assert run.step(400, None) == 6


def test_missing_telemetry_restarts_delay():
    run = Run(Policy(scale_down_delay_s=100, max_scale_down_fraction=1.0), replicas=6)
    run.follow([(0, 60.0), (50, None), (120, 10.0)])
    # The hold at t=50 counts as a need of 6 in force until t=120, so 6 stay until t > 220.
    assert run.replicas == 6
    assert run.step(221, window(10)) == 1


def test_missing_telemetry_never_scales_to_zero():
    policy = Policy(scale_down_delay_s=0, scale_to_zero=True)
    run = Run(policy, replicas=1, min_replicas=0)
    assert run.step(0, None) == 1
    assert run.step(1000, None) == 1


def test_bounds_changed_by_operator_apply_at_once():
    run = Run(Policy(), replicas=10, max_replicas=4)
    assert run.step(0, window(100)) == 4
    run = Run(Policy(), replicas=1, min_replicas=3)
    assert run.step(0, None) == 3


def test_measurements_describe_window():
    traffic = TrafficWindow(
        requests_per_second=12.0,
        in_flight=None,
        by_cluster={7: 8.0, 3: 4.0},
        by_origin={"Berlin": 9.0, "Paris": 3.0},
        samples=4,
    )
    decision = decide(
        Policy(),
        current=1,
        min_replicas=1,
        max_replicas=50,
        traffic=traffic,
        state={},
        now=0,
        cluster_names={3: "aws-use1-a", 7: "gcp-euw4-a"},
    )
    measurements = decision.measurements
    assert measurements["requests_per_second"] == 12.0
    assert measurements["by_cluster"] == {"aws-use1-a": 4.0, "gcp-euw4-a": 8.0}
    assert (measurements["min_replicas"], measurements["max_replicas"]) == (1, 50)
    assert measurements["by_origin"] == {"Berlin": 9.0, "Paris": 3.0}
    assert measurements["window_s"] == 60
    assert measurements["samples"] == 4
    assert measurements["recommendation"] == 2


def test_state_is_pruned_and_not_mutated():
    run = Run(Policy(scale_down_delay_s=60), replicas=1)
    state_before = {"recommendations": [[0, 1]], "changes": []}
    run.state = state_before
    run.step(10, window(50))
    assert state_before == {"recommendations": [[0, 1]], "changes": []}
    for now in range(20, 1000, 20):
        run.step(now, window(50))
    assert len(run.state["recommendations"]) <= 5
    assert run.state["changes"] == []


def test_stabilised_recommendation_counts_need_in_force_at_window_start():
    assert stabilised_recommendation([[0, 9], [100, 2]], now=150, delay_s=100) == 9
    assert stabilised_recommendation([[0, 9], [100, 2]], now=201, delay_s=100) == 2
