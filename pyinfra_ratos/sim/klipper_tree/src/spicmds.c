// SPI bus commands.

DECL_COMMAND(command_config_spi, "config_spi oid=%c pin=%u cs_active_high=%c");
DECL_COMMAND(command_spi_transfer, "spi_transfer oid=%c data=%*s");
// reply: sendf("spi_transfer_response oid=%c response=%*s", ...);
