"""The gateway: MQTT in, vectorised OEE for all machines, KPIs out."""
