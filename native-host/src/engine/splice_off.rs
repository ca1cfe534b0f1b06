//! The splice path's stand-in where there is no splice(2) (every system but Linux): no URL is [`eligible`], so every
//! body goes through reqwest, and the types the transfer names ([`Conn`], [`Body`]) have no values.

use std::fs::File;
use std::io;

use reqwest::StatusCode;
use reqwest::header::HeaderMap;
use tokio_util::sync::CancellationToken;
use url::Url;

/// Never: this system has no splice(2).
pub fn eligible(_url: &Url) -> bool {
    false
}

/// One transfer's use of this path, always off.
#[derive(Debug, Default)]
pub struct Route;

impl Route {
    pub fn is_off(&self) -> bool {
        true
    }

    pub fn turn_off(&self) {}

    pub fn allow_tls(&self, _on: bool) {}

    pub fn carries(&self, _url: &Url) -> bool {
        false
    }

    pub fn open_spares(&self, _url: &Url, _n: u32) {}

    pub fn keep_spares(&self, _n: usize) {}

    pub async fn take_spare(&self, _stop: &CancellationToken) -> Option<Conn> {
        None
    }
}

/// A kept-alive connection: never made here.
#[derive(Debug)]
pub enum Conn {}

/// What the server answered.
pub enum Answer {
    /// A `206` with a `Content-Length`: its status, headers and body.
    Body(StatusCode, HeaderMap, Body),
    /// Any other final answer, whose body is not read.
    Other(StatusCode, HeaderMap),
    /// Something this path does not carry; ask reqwest.
    NotHere,
}

/// Always [`Answer::NotHere`]: reqwest carries every request.
pub async fn get(_reuse: Option<Conn>, _url: &Url, _headers: &HeaderMap) -> io::Result<Answer> {
    Ok(Answer::NotHere)
}

/// A spliced body: never made here.
pub enum Body {}

impl Body {
    pub async fn stage(&mut self, _max: usize) -> io::Result<usize> {
        match *self {}
    }

    pub fn commit(&mut self, _file: &File, _at: u64, _n: usize) -> io::Result<()> {
        match *self {}
    }

    pub fn into_conn(self) -> Option<Conn> {
        match self {}
    }
}
