-- Accuracy trend: RMSE and interval coverage of each week, whole population, per service and scoring version.
-- Tile: line chart, x = window, y = rmse (and coverage on a second axis), one line per service.
SELECT service, `window` AS week, model_version, n AS known_trips, rmse, mae, bias, coverage, interval_width
FROM taxi.accuracy_metrics
WHERE window_type = 'week' AND slice_key IS NULL
ORDER BY service, week, model_version
