"""selection: measuring variants side by side (``benchmarking``: windows, percentiles, the
machine; ``comparison``: every variant and the deployed champion on one test split), choosing
and blessing one (``decision``) in the task's quality metric (``quality``: accuracy, or RMSE
for regression), the optimisation report, and retraining's challenger."""
