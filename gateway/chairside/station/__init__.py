"""The nurses' station: a web app beside Grafana (board, actions, alarm tones, accounts)."""
