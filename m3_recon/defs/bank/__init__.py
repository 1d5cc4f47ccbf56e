"""Bank statements (BAI2, camt.053): readers, the statement-lines asset and the folder sensor."""
