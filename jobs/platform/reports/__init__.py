"""HTML the project writes for people: offline Data Docs (``offline``) and the validation overview page
(``validation_overview``). Every page renders with no network: nothing is loaded from a CDN."""
