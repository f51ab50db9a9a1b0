"""selection: measuring variants side by side (``benchmarking``, ``comparison``), choosing and
blessing one (``decision``), the optimisation report, and retraining's challenger and scoring."""
