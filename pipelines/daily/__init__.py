"""The daily job: build missing days, train TPM/CPM when due, fine-tune A-CTR, evaluate, export.

Day D is the evaluation day: every model trains on days before D and A-CTR is scored on
the ad traffic of D, which it never saw. The run config's `schedule` says how often TPM and
CPM retrain: a step is due when its output for D's period (D's month for a monthly TPM, the
week holding D for a weekly CPM, ...) is missing. A new CPM warm-starts from the previous CPM
(weights by name, embedding rows by token, BatchNorm kept; features whose spec fingerprint
changed start fresh) and reads the chosen TPM snapshots (`transfer:`). The A-CTR of D is
updated from the A-CTR of the day before on the ad days it has not learned from, or is
re-derived from the newest CPM as the `transfer:` options say when there is none or a newer
CPM landed since. The steps themselves live in pipelines/steps.py, shared with `compare`.
Each step's outcome goes to the day's report, rewritten as steps run.

Resumable: outputs are written to `<name>.tmp` folders (exports to a staging folder) and
renamed into place when whole; a killed run leaves only such leftovers, which the next run
deletes under the work lock. A rerun reuses D's A-CTR checkpoint, and every export carries the
id of the checkpoint it came from (assets.extra/actr.json), so a day is never published twice.

Distributed (the config's `distribute:`, ecdctr/training/distribute.py): every task of the cluster
runs this same job. The chief alone takes the work lock, builds, saves checkpoints, evaluates,
exports, gates, publishes, prunes and writes the report; the other workers wait for its build,
train every fit with it, and wait for each model it saves before reading it. With
parameter_server the chief coordinates and the `worker` and `ps` tasks only serve it.

Layout: <work>/tpm/<YYYY-MM or period start>/ (the TPM's model folder plus its exported
<entity>.npy/.keys.json and manifest.json), <work>/models/cpm/<period start>/ and
<work>/models/actr/<D>/: self-describing model folders (ecdctr/training/checkpoint.py).

The parts, each with one job:
  run.py          run_daily: the report, the lock and the alert around the job
  job.py          the steps, top-down: build → TPM → CPM → A-CTR → export
  schedule.py     what is due on D: a step's period and whether it has its output
  model_store.py  the model folders of one kind: whole, usable before D, pruned
  publish.py      the export step: stage, gate, publish or reject; never twice a checkpoint
  cluster.py      a worker that is not the chief waits for its build, saves and finish
  report.py       the day's report, each step's status, the outcome, exit code and alert
  leftovers.py    what killed runs left behind, deleted when the next run starts
"""

from pipelines.daily.job import DailyJob
from pipelines.daily.report import ALERT_ON, OUTCOMES, DailyError, outcome, report_path, send_alert
from pipelines.daily.run import run_daily, work_lock

__all__ = ["ALERT_ON", "OUTCOMES", "DailyError", "DailyJob", "outcome", "report_path", "run_daily",
           "send_alert", "work_lock"]
