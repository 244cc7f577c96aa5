"""Edge agents: read a machine (OPC UA, later Modbus and digital I/O) and publish per the contract."""
