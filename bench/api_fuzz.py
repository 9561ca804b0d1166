"""The API fuzzed from the server's own OpenAPI schema with Schemathesis (its CLI, its coverage
and fuzzing phases, a bounded number of examples per operation) against a running server.

Checks: no 5xx, status codes, content types, headers and bodies as the schema declares them,
and OpenAI's error shape on every 4xx (bench/fuzz_hooks.py). The server is started with small
limits (FUZZ_SETTINGS) so a generated request that is accepted runs a short turn; before the run
a session and a stored response are made for the path ids to point at."""

from __future__ import annotations

import collections
import json
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from bench.server_process import MODEL_NAME, REPO

FUZZ_SETTINGS = {"max_output_tokens": 8, "default_max_tokens": 8, "max_n": 2,
                 "max_prompt_tokens": 512}
FUZZ_SESSION = "fuzz-session"
FUZZ_API_KEY = "fuzz-key"
CHECKS = ("not_a_server_error", "status_code_conformance", "content_type_conformance",
          "response_headers_conformance", "response_schema_conformance", "openai_error_shape")
SCHEMATHESIS = Path(sys.executable).parent / "schemathesis"


@dataclass
class ApiFuzzResult:
    returncode: int
    output: str
    requests_by_operation: dict[str, dict[str, int]] = field(default_factory=dict)
    failed_checks: dict[str, int] = field(default_factory=dict)
    num_requests: int = 0
    num_server_errors: int = 0  # 5xx answers
    num_no_answer: int = 0  # connection errors and timeouts
    slowest_seconds: float = 0.0

    @property
    def is_clean(self) -> bool:
        return (self.returncode == 0 and not self.failed_checks and not self.num_server_errors
                and not self.num_no_answer)

    def summary(self) -> dict:
        return {"requests": self.num_requests, "server_errors": self.num_server_errors,
                "no_answer": self.num_no_answer, "failed_checks": self.failed_checks,
                "slowest_seconds": round(self.slowest_seconds, 3),
                "by_operation": self.requests_by_operation}


def make_known_ids(url: str, api_key: str | None = None) -> dict[str, str]:
    """A session and a stored response for the fuzzed path ids to find."""
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    with httpx.Client(base_url=url, timeout=60.0, headers=headers) as http:
        chat = http.post("/v1/chat/completions", headers={"X-Session-Id": FUZZ_SESSION},
                         json={"model": MODEL_NAME, "max_tokens": 4,
                               "messages": [{"role": "user", "content": "Hello"}]})
        chat.raise_for_status()
        response = http.post("/v1/responses", json={"model": MODEL_NAME, "input": "Hello",
                                                    "max_output_tokens": 4})
        response.raise_for_status()
    return {"RETSERVE_FUZZ_MODEL": MODEL_NAME, "RETSERVE_FUZZ_SESSION": FUZZ_SESSION,
            "RETSERVE_FUZZ_RESPONSE": response.json()["id"]}


def run_api_fuzz(url: str, report_dir: Path, max_examples: int, seed: int | None = None,
                 phases: str = "examples,coverage,fuzzing", timeout: float = 600.0,
                 request_timeout: float = 30.0, api_key: str | None = None) -> ApiFuzzResult:
    """`api_key`: the server's key, when it has keys (most requests then carry it)."""
    report_dir.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, **make_known_ids(url, api_key), "SCHEMATHESIS_HOOKS": "bench.fuzz_hooks",
           "PYTHONPATH": str(REPO), "NO_COLOR": "1"}
    if api_key:
        env["RETSERVE_FUZZ_API_KEY"] = api_key
    cmd = [str(SCHEMATHESIS), "run", f"{url}/openapi.json", "--checks", ",".join(CHECKS),
           "--max-examples", str(max_examples), "--phases", phases, "--workers", "1",
           "--request-timeout", str(request_timeout), "--continue-on-failure",
           "--suppress-health-check", "all", "--report", "ndjson",
           "--report-dir", str(report_dir)]
    if seed is not None:
        cmd += ["--seed", str(seed)]
    done = subprocess.run(cmd, cwd=report_dir, env=env, capture_output=True, text=True,
                          timeout=timeout)
    result = ApiFuzzResult(done.returncode, done.stdout + done.stderr)
    for report in sorted(report_dir.glob("*.ndjson")):
        _read_report(report, result)
    return result


def _read_report(path: Path, result: ApiFuzzResult) -> None:
    by_operation: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    failed: collections.Counter = collections.Counter()
    for line in path.read_text().splitlines():
        event = json.loads(line).get("ScenarioFinished")
        if event is None:
            continue
        recorder = event["recorder"]
        for interaction in recorder.get("interactions", {}).values():
            response = interaction.get("response")
            result.num_requests += 1
            if response is None:
                result.num_no_answer += 1
                by_operation[recorder["label"]]["no answer"] += 1
                continue
            status = response["status_code"]
            by_operation[recorder["label"]][str(status)] += 1
            result.num_server_errors += status >= 500
            result.slowest_seconds = max(result.slowest_seconds, response["elapsed"])
        for checks in recorder.get("checks", {}).values():
            for check in checks:
                if check["status"] == "failure":
                    failed[check["name"]] += 1
    for label, counts in by_operation.items():
        merged = collections.Counter(result.requests_by_operation.get(label, {}))
        merged.update(counts)
        result.requests_by_operation[label] = dict(sorted(merged.items()))
    for name, count in failed.items():
        result.failed_checks[name] = result.failed_checks.get(name, 0) + count
