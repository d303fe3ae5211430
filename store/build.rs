// `sqlx::migrate!` embeds ../migrations at build time; a new migration file must rebuild it.
fn main() {
    println!("cargo:rerun-if-changed=../migrations");
}
