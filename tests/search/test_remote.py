"""A search timed by a device agent on loopback (ONNX Runtime backend): real HTTP, real builds."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest
from typer.testing import CliRunner

from yolotune.cli import app
from yolotune.evaluators import AgentConfig, AgentServer
from yolotune.studies import load_study

TOKEN = "loopback-token"
BOARD = "board:\n  runtime: onnxruntime\n  agent: true\n  precisions: [int8, fp32]\n  threads: 1\n  imgsz: 160\n"


@pytest.fixture
def targets_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    # keep the registry as it was: the CLI adds the file to it (and to YOLOTUNE_TARGETS)
    monkeypatch.setattr("yolotune.evaluators._spec._SPECS", {})
    monkeypatch.setattr("yolotune.evaluators._spec._LOADED", [])
    monkeypatch.delenv("YOLOTUNE_TARGETS", raising=False)
    f = tmp_path / "targets.yaml"
    f.write_text(BOARD)
    return f


@pytest.fixture
def token_file(tmp_path: Path) -> Path:
    f = tmp_path / "token"
    f.write_text(TOKEN + "\n")
    return f


@pytest.fixture
def agent(tmp_path: Path) -> Iterator[AgentServer]:
    server = AgentServer(config=AgentConfig(port=0, token=TOKEN, cache_dir=tmp_path / "agent")).start()
    yield server
    server.stop()


def test_tune_run_times_every_candidate_on_the_agent(
    tmp_path: Path, targets_file: Path, token_file: Path, agent: AgentServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    common = ["--targets-file", str(targets_file), "--target", "board", "--root", str(tmp_path / "studies")]
    device = ["--device-url", agent.url, "--device-token-file", str(token_file)]
    args = ["run", "--data", "coco8", "--budget", "2", "--study", "remote", "--retime-rounds", "1", *common, *device]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "latency: board on" in result.stdout  # the front says which device measured it
    study = load_study(study="remote", root=tmp_path / "studies")
    complete = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    assert len(complete) == 2
    for t in complete:
        prov = t.user_attrs["provenance"]
        assert prov["target"] == "board" and prov["settings"]["agent"] == agent.url  # who measured it
        assert prov["imgsz"] == 160  # the target's default image size
        assert t.user_attrs["latency"]["runs"] >= 50
    assert study.user_attrs["target"]["agent"] is True
    # the search ended by re-timing the trials near its front on the agent too, one round
    from yolotune.studies import current_retiming

    retiming = current_retiming(study)
    assert retiming is not None and retiming.rounds == 1 and retiming.target == "board"

    # export re-times on the agent the study recorded, without the targets file
    monkeypatch.setattr("yolotune.evaluators._spec._SPECS", {})
    monkeypatch.setattr("yolotune.evaluators._spec._LOADED", [])
    monkeypatch.delenv("YOLOTUNE_TARGETS", raising=False)
    root = ["--study", "remote", "--root", str(tmp_path / "studies")]
    exported = CliRunner().invoke(
        app, ["export", "--trial", "0", *root, "--out", str(tmp_path / "x"), "--device-token-file", str(token_file)]
    )
    assert exported.exit_code == 0, exported.output
    remeasured = json.loads((tmp_path / "x" / "remeasured.json").read_text())
    assert remeasured["latency_ms"] > 0
    assert abs(remeasured["map50_95"] - complete[0].values[0]) <= 0.002

    # a missing or wrong token is refused before the search starts, in one line
    bad = tmp_path / "bad-token"
    bad.write_text("wrong\n")
    refused = CliRunner().invoke(app, [*args[:-1], str(bad)])
    assert refused.exit_code == 2 and "answered 401" in refused.stderr
    no_url = CliRunner().invoke(app, ["run", "--data", "coco8", "--budget", "2", *common])
    assert no_url.exit_code == 2 and "--device-url" in no_url.stderr


def test_an_agent_stopped_mid_run_fails_that_trial_and_the_search_goes_on(
    tmp_path: Path, targets_file: Path, token_file: Path, agent: AgentServer
) -> None:
    from yolotune.evaluators import add_target_file
    from yolotune.search import CandidateSettings, SearchConfig, TrialOutcome, run_search

    add_target_file(targets_file)
    port = int(agent.url.rsplit(":", 1)[1])
    settings = CandidateSettings(imgsz=160, target="board", device_url=agent.url, device_token_file=str(token_file))
    config = SearchConfig(
        model="yolov8n-coco.pt", data="coco8", budget=3, settings=settings, root=tmp_path / "s", retime_rounds=0
    )
    servers = [agent]
    events: list[str] = []

    def on_trial(outcome: TrialOutcome, study: optuna.Study) -> None:
        events.append(outcome.state)
        if outcome.state == "COMPLETE" and len(servers) == 1:
            servers[0].stop()  # the device goes away after the first candidate
            servers.append(servers[0])
        elif outcome.state == "FAIL" and len(servers) == 2:
            config_back = AgentConfig(port=port, token=TOKEN, cache_dir=tmp_path / "agent")
            servers.append(AgentServer(config=config_back).start())  # and comes back

    try:
        study = run_search(config, on_trial=on_trial)
    finally:
        if len(servers) == 3:
            servers[2].stop()
    failed = study.get_trials(states=(optuna.trial.TrialState.FAIL,))
    assert len(failed) == 1 and "unreachable" in failed[0].user_attrs["fail_reason"]
    assert events[:2] == ["COMPLETE", "FAIL"]
    complete = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    assert len(complete) == 3
    # the failed trial's plan was queued again and completed once the agent was back
    retried = [t for t in complete if t.user_attrs.get("retry_of") == failed[0].number]
    assert len(retried) == 1 and retried[0].params == failed[0].params


def test_an_agent_that_stays_away_stops_the_search_and_the_same_command_resumes(
    tmp_path: Path, targets_file: Path, token_file: Path, agent: AgentServer
) -> None:
    import threading
    import time

    common = ["--targets-file", str(targets_file), "--target", "board", "--root", str(tmp_path / "studies")]
    device = ["--device-url", agent.url, "--device-token-file", str(token_file)]
    args = ["run", "--data", "coco8", "--budget", "3", "--study", "gone", "--retime-rounds", "0", *common, *device]

    def stop_when_trial_1_starts() -> None:  # the device goes away after the first candidate, and stays away
        deadline = time.monotonic() + 300
        while not (tmp_path / "studies" / "gone" / "trials" / "1").is_dir() and time.monotonic() < deadline:
            time.sleep(0.05)
        agent.stop()

    watcher = threading.Thread(target=stop_when_trial_1_starts)
    watcher.start()
    result = CliRunner().invoke(app, args)
    watcher.join()
    assert result.exit_code == 2, result.output
    assert "lost the target" in result.stderr and "run the same command to resume" in result.stderr
    assert "Traceback" not in result.output
    assert "Pareto front" in result.stdout  # what was measured is still shown
    # one failed trial, not every plan failed in turn against a device that is gone
    study = load_study(study="gone", root=tmp_path / "studies")
    failed = study.get_trials(states=(optuna.trial.TrialState.FAIL,))
    assert [t.user_attrs.get("reference") for t in failed] == ["int8"]
    assert study.get_trials(states=(optuna.trial.TrialState.WAITING,))  # its plan waits for the next run

    port = int(agent.url.rsplit(":", 1)[1])
    back = AgentServer(config=AgentConfig(port=port, token=TOKEN, cache_dir=tmp_path / "agent")).start()
    try:
        again = CliRunner().invoke(app, args)
    finally:
        back.stop()
    assert again.exit_code == 0, again.output
    study = load_study(study="gone", root=tmp_path / "studies")
    complete = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    assert sorted(t.user_attrs.get("reference") for t in complete) == ["fp32", "int8", "seeds"]
