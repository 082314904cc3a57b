"""taxi backtest: the operating loop replayed over real months, and what retraining and monitoring are worth."""
