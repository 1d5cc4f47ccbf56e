"""The code location that test_production.py serves through a real ``dagster-daemon``.

m3_recon's own assets, jobs, schedules and sensors, with the warehouse taken from the environment
(``warehouse_resource_from_env``, as definitions.py takes it in production) and every step in its
run's process: a run that writes holds the one ``duckdb_writer`` slot anyway, so separate step
processes would only add start-up time. ``evaluation_counter`` evaluates every second and counts its
evaluations in its cursor (it requests nothing), so a test can see sensor ticks and a cursor
survive a restart without waiting out the posting sensor's 60-second interval.
"""

import dagster as dg

from m3_recon.definitions import defs
from m3_recon.storage import warehouse_resource_from_env


@dg.sensor(minimum_interval_seconds=1, default_status=dg.DefaultSensorStatus.STOPPED)
def evaluation_counter(context: dg.SensorEvaluationContext) -> dg.SensorResult:
    evaluations = int(context.cursor or 0) + 1
    return dg.SensorResult(skip_reason=f"evaluation {evaluations}", cursor=str(evaluations))


location = dg.Definitions(
    assets=list(defs.assets),
    asset_checks=list(defs.asset_checks or []),
    jobs=list(defs.jobs),
    schedules=list(defs.schedules),
    sensors=[*defs.sensors, evaluation_counter],
    resources={**defs.resources, "duckdb": warehouse_resource_from_env()},
    executor=dg.in_process_executor,
)
