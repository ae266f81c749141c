//! `PAY_PRODUCTS`: the catalog of products the server sells at its own prices.

use std::str::FromStr;

use crate::orders::{MAX_AMOUNT_FEN, MAX_DESCRIPTION_BYTES};

/// A product of the catalog: the server decides its price.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Product {
    pub id: String,
    pub price_fen: i64,
    /// Shown on the payment sheet (WeChat's `body`).
    pub name: String,
}

/// The configured products, in configuration order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Catalog(pub Vec<Product>);

impl Catalog {
    pub fn get(&self, id: &str) -> Option<&Product> {
        self.0.iter().find(|p| p.id == id)
    }
}

/// Longest product id; ids are `[0-9A-Za-z_-]`.
pub const MAX_PRODUCT_ID_LEN: usize = 32;

pub fn valid_product_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_PRODUCT_ID_LEN
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

impl FromStr for Catalog {
    type Err = String;

    /// `id:price_fen:name;...`; the name may contain `:` but not `;`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut products: Vec<Product> = Vec::new();
        for entry in s.split(';').map(str::trim).filter(|e| !e.is_empty()) {
            let mut parts = entry.splitn(3, ':');
            let (Some(id), Some(price), Some(name)) = (parts.next(), parts.next(), parts.next())
            else {
                return Err(format!(
                    "PAY_PRODUCTS: {entry:?} is not id:price_fen:name (entries separated by ';')"
                ));
            };
            let (id, price, name) = (id.trim(), price.trim(), name.trim());
            if !valid_product_id(id) {
                return Err(format!(
                    "PAY_PRODUCTS: product id {id:?} must be 1..={MAX_PRODUCT_ID_LEN} characters of [0-9A-Za-z_-]"
                ));
            }
            let price_fen = price
                .parse::<i64>()
                .ok()
                .filter(|p| (1..=MAX_AMOUNT_FEN).contains(p))
                .ok_or_else(|| {
                    format!(
                        "PAY_PRODUCTS: price of {id} must be an integer number of fen in 1..={MAX_AMOUNT_FEN}, not {price:?}"
                    )
                })?;
            if name.is_empty() || name.len() > MAX_DESCRIPTION_BYTES {
                return Err(format!(
                    "PAY_PRODUCTS: name of {id} must be 1..={MAX_DESCRIPTION_BYTES} bytes"
                ));
            }
            if products.iter().any(|p| p.id == id) {
                return Err(format!("PAY_PRODUCTS: product {id} is listed twice"));
            }
            products.push(Product {
                id: id.to_owned(),
                price_fen,
                name: name.to_owned(),
            });
        }
        Ok(Self(products))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn catalog_parses() {
        let c: Catalog = "vip:100:VIP 1 month; coins_10 : 1000 : 10 coins: bonus"
            .parse()
            .unwrap();
        assert_eq!(c.0.len(), 2);
        assert_eq!(c.get("vip").map(|p| p.price_fen), Some(100));
        assert_eq!(
            c.get("coins_10").map(|p| p.name.as_str()),
            Some("10 coins: bonus")
        );
        assert_eq!("".parse::<Catalog>().unwrap(), Catalog::default());
    }

    #[test]
    fn catalog_rejects_and_names_the_variable() {
        for bad in [
            "vip",
            "vip:100",
            "vip:0:x",
            "vip:-5:x",
            "vip:1.5:x",
            "vip:100:",
            "v ip:100:x",
            "vip:100:x;vip:200:y",
            "vip:99999999999:x",
        ] {
            let err = bad.parse::<Catalog>().unwrap_err();
            assert!(err.starts_with("PAY_PRODUCTS"), "{bad}: {err}");
        }
    }
}
