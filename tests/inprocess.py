"""A sweep launcher without the fresh process per run, for tests about folders and files (not
about isolation): each run trains in the test's own process, from the batches the sweep saved."""
from harness.run import train
from harness.run.batches import data_key
from harness.sweep.launchers import OneAtATime


def quiet(*args, **kwargs):
    pass


class InProcess(OneAtATime):
    def result(self, sweep, run):
        data = sweep.folder / ".runs" / f"data_{data_key(run)}.pt"
        return dict(train.run(sweep.cfg, dict(run, data=str(data)), log=quiet), status="ok")
