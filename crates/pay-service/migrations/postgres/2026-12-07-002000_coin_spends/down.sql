DROP TABLE coin_spends;
