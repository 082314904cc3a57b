-- Accuracy by pickup borough per week: a heat map of RMSE (rows: borough, columns: week).
-- Slices with fewer than 30 known trips are left out: their RMSE is noise.
SELECT service, `window` AS week, slice_value AS borough, model_version, n AS known_trips, rmse, coverage
FROM taxi.accuracy_metrics
WHERE window_type = 'week' AND slice_key = 'pu_borough' AND n >= 30
ORDER BY service, week, borough
