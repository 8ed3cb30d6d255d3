"""Install: clinic CA and certificates, box provisioning, firmware flashing, Grafana dashboards."""
