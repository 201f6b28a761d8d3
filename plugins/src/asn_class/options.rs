//! Options of an `asn_class` chain entry.

use enrichd_engine::AddressSelector;
use schemars::JsonSchema;
use serde::Deserialize;

/// `[[chain]] plugin = "asn_class"`: classifies the autonomous system of an
/// event address as `hosting`, `isp`, `education` or `other` by keywords in
/// its organisation name. Needs an earlier stage that declares an AS number
/// fact (the `asn` plugin does); it reads that fact, whatever its output key.
#[derive(Clone, Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AsnClassOptions {
    /// Output key of the class (`"hosting"`, `"isp"`, `"education"`,
    /// `"other"`, or `null` when the address has no known AS).
    #[serde(default = "default_output")]
    pub output: String,
    /// Whose AS to classify: `source`, `destination`, or
    /// `destination_or_source` (the destination's when known, else the
    /// source's).
    #[serde(default = "default_address")]
    pub address: AddressSelector,
    /// Organisation-name keywords (case-insensitive substrings) of hosting
    /// and cloud providers. Checked first.
    #[serde(default = "default_hosting")]
    pub hosting: Vec<String>,
    /// Keywords of universities and research networks. Checked second.
    #[serde(default = "default_education")]
    pub education: Vec<String>,
    /// Keywords of access providers (telecoms, cable, mobile). Checked
    /// last; an organisation matching nothing is `other`.
    #[serde(default = "default_isp")]
    pub isp: Vec<String>,
}

fn default_output() -> String {
    "asn_class".into()
}

fn default_address() -> AddressSelector {
    AddressSelector::DestinationOrSource
}

fn words(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

fn default_hosting() -> Vec<String> {
    words(&[
        "hosting",
        "cloud",
        "datacenter",
        "data center",
        "server",
        "colocation",
        "amazon",
        "google",
        "microsoft",
        "digitalocean",
        "ovh",
        "hetzner",
        "linode",
        "akamai",
        "cloudflare",
        "leaseweb",
    ])
}

fn default_education() -> Vec<String> {
    words(&["university", "universit", "college", "institute of technology", "school", "academ", "research", "edu"])
}

fn default_isp() -> Vec<String> {
    words(&[
        "telecom",
        "telekom",
        "telco",
        "telstra",
        "telefonica",
        "telenor",
        "telia",
        "broadband",
        "cable",
        "communications",
        "wireless",
        "mobile",
        "verizon",
        "comcast",
        "vodafone",
        "orange",
        "at&t",
    ])
}
