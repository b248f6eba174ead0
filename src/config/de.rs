//! Deserializers the sections share: lists written as YAML lists or as one comma-separated
//! variable, and maps of scalars kept as text (librdkafka takes every value as a string).
//! serde has no "list or CSV" adapter of its own, hence these.
use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer};

/// A map of librdkafka properties whose values may be any scalar (`linger.ms: 5`,
/// `enable.ssl.certificate.verification: false`), kept as their text.
pub(super) fn scalar_map<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<BTreeMap<String, String>, D::Error> {
    struct Text(String);
    impl<'de> Deserialize<'de> for Text {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct V;
            impl serde::de::Visitor<'_> for V {
                type Value = Text;
                fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                    f.write_str("a string, a number or a boolean")
                }
                fn visit_str<E>(self, v: &str) -> Result<Text, E> {
                    Ok(Text(v.to_owned()))
                }
                fn visit_bool<E>(self, v: bool) -> Result<Text, E> {
                    Ok(Text(v.to_string()))
                }
                fn visit_i64<E>(self, v: i64) -> Result<Text, E> {
                    Ok(Text(v.to_string()))
                }
                fn visit_u64<E>(self, v: u64) -> Result<Text, E> {
                    Ok(Text(v.to_string()))
                }
                fn visit_f64<E>(self, v: f64) -> Result<Text, E> {
                    Ok(Text(v.to_string()))
                }
                fn visit_char<E>(self, v: char) -> Result<Text, E> {
                    Ok(Text(v.to_string()))
                }
            }
            d.deserialize_any(V)
        }
    }
    Ok(BTreeMap::<String, Text>::deserialize(d)?
        .into_iter()
        .map(|(k, Text(v))| (k, v))
        .collect())
}

/// `GATEWAY_KAFKA_BROKERS=a:9092,b:9092` or a YAML list.
pub(super) fn list_or_csv<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    ListOrCsv::deserialize(d).map(ListOrCsv::items)
}

/// A list as YAML writes it, or as one comma-separated string (how a variable carries it).
#[derive(Deserialize)]
#[serde(untagged)]
pub(super) enum ListOrCsv {
    List(Vec<String>),
    Csv(String),
}

impl ListOrCsv {
    fn items(self) -> Vec<String> {
        let items = match self {
            ListOrCsv::List(v) => v,
            ListOrCsv::Csv(s) => s.split(',').map(str::to_owned).collect(),
        };
        items
            .into_iter()
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty())
            .collect()
    }
}

/// [`list_or_csv`] for a list whose absence means something else than an empty list; unset
/// (null, as the defaults serialize it) stays `None`.
pub(super) fn some_list_or_csv<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<Option<Vec<String>>, D::Error> {
    Ok(Option::<ListOrCsv>::deserialize(d)?.map(ListOrCsv::items))
}
