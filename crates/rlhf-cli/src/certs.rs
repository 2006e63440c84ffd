//! `rlhf certs`: a development CA and certificates for `cluster.tls` (docs/security.md).

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;

#[derive(Debug, Args)]
pub struct CertsArgs {
    /// Folder for ca.crt, ca.key (made when missing, else reused) and <stem>.crt, <stem>.key.
    #[arg(long)]
    out: PathBuf,
    /// A DNS name or IP address the certificate is for (repeat for several; wildcards such as
    /// `*.rlhf.svc.cluster.local` work for DNS names). The first is its common name.
    #[arg(long = "name", required = true)]
    names: Vec<String>,
    /// File name of the certificate and key, without extension.
    #[arg(long, default_value = "tls")]
    stem: String,
    /// Days the certificate (and a new CA) stays valid.
    #[arg(long, default_value_t = 365)]
    days: u32,
}

pub fn run(args: CertsArgs) -> Result<()> {
    if args.stem.is_empty() || args.stem.contains(['/', '\\']) || args.stem == "ca" {
        anyhow::bail!("--stem `{}`: a plain file name other than `ca`", args.stem);
    }
    let issued = rlhf_proto::certs::issue(&args.out, &args.stem, &args.names, args.days)?;
    if issued.ca_created {
        eprintln!(
            "made a CA: {} (its key {} signs certificates; keep it out of the cluster)",
            issued.ca_cert.display(),
            issued.ca_key.display()
        );
    } else {
        eprintln!("signed with the existing CA in {}", args.out.display());
    }
    eprintln!(
        "certificate for {}: {} (key {}), valid {} days",
        args.names.join(", "),
        issued.cert.display(),
        issued.key.display(),
        args.days
    );
    println!(
        "[cluster.tls]\nca = \"{}\"\ncert = \"{}\"\nkey = \"{}\"",
        issued.ca_cert.display(),
        issued.cert.display(),
        issued.key.display()
    );
    Ok(())
}
