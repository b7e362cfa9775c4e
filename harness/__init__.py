"""The harness: one run (harness.run), sweeps of runs (harness.sweep), the results store
(harness.store) and the reports (harness.report). attentions/ and metrics/ sit below it."""
